"""Embedding runtimes: the ONNX export is faithful, cached atomically, and named in fingerprints."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from evaluators.embedding import Embedder, bundled_minilm_path, model_fingerprint, shared_embedder
from evaluators.onnx_encoder import build_onnx, pooling_mode

TEXTS = [
    "What are common mistakes people make with unit testing?",
    "hello",
    "The museum opens at nine and offers free guided tours on weekends. " * 6,
]


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return Embedder(runtime="torch", cache_size=0).encode(TEXTS)


def test_onnx_fp32_gives_the_torch_vectors(torch_vectors: np.ndarray) -> None:
    e = Embedder(runtime="onnx", cache_size=0)
    v = e.encode(TEXTS)
    assert v.shape == torch_vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert (v * torch_vectors).sum(1).min() > 0.9999
    # same numbers, so indexes and heads built with torch stay valid
    assert e.fingerprint == model_fingerprint(e.model_dir)


def test_onnx_int8_is_close_and_says_so(torch_vectors: np.ndarray) -> None:
    e = shared_embedder()  # the default runtime
    assert e.runtime == "onnx-int8"
    v = e.encode(TEXTS)
    cos = (v * torch_vectors).sum(1)
    assert cos.min() > 0.97, cos
    assert e.fingerprint != e.model_fingerprint  # int8 vectors differ: an index must say which
    # different texts get different vectors (a broken tokenizer maps everything to [UNK])
    assert float(v[0] @ v[1]) < 0.5


@pytest.mark.parametrize("runtime", ["onnx-int8", "onnx"])
def test_a_vector_does_not_depend_on_its_batch(runtime: str) -> None:
    """A guardrail score must not change with concurrent traffic (int8's dynamic
    activation scales would make it depend on batch neighbours and padding)."""
    e = Embedder(runtime=runtime, cache_size=0)  # type: ignore[arg-type]
    together = e.encode(TEXTS, batch_size=3)
    alone = np.stack([e.encode([t])[0] for t in TEXTS])
    assert np.abs(together - alone).max() < 1e-5


def test_export_is_cached_and_reused(tmp_path: Path) -> None:
    model = bundled_minilm_path()
    fp = model_fingerprint(model)
    path = build_onnx(model, fp, "fp32", tmp_path)
    assert path.parent == tmp_path / "onnx" and path.exists()
    mtime = path.stat().st_mtime_ns
    assert build_onnx(model, fp, "fp32", tmp_path) == path
    assert path.stat().st_mtime_ns == mtime
    # nothing half-written is left behind
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [path.name]


def test_unsupported_pooling_is_refused_with_a_hint(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(bundled_minilm_path(), model)
    cfg = model / "1_Pooling" / "config.json"
    raw = json.loads(cfg.read_text())
    raw.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    cfg.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"pooling_mode_max_tokens.*embedding.runtime: torch"):
        pooling_mode(model)


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match="onnx-int8, onnx, torch"):
        Embedder(runtime="tensorrt")  # type: ignore[arg-type]


def test_cache_dir_comes_from_the_environment() -> None:
    from evaluators.onnx_encoder import default_cache_dir

    assert default_cache_dir() == Path(os.environ["GATEHOUSE_CACHE_DIR"])  # set by conftest


def test_an_unwritable_cache_falls_back_to_a_private_export(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # mkdir below it fails (even as root, unlike a chmod)
    model = bundled_minilm_path()
    with caplog.at_level("WARNING", logger="gatehouse.embedding"):
        path = build_onnx(model, model_fingerprint(model), "fp32", blocker / "cache")
    assert path.exists() and not str(path).startswith(str(blocker))
    assert "not writable" in caplog.text and "embedding.cache_dir" in caplog.text
    shutil.rmtree(path.parent, ignore_errors=True)


async def test_a_cached_text_is_answered_without_the_model_thread() -> None:
    """Grounding re-embeds the user turn safety just scored: that must not queue behind model runs."""
    e = Embedder()
    v = e.encode([TEXTS[0]])[0]
    assert np.array_equal((await e.aencode([TEXTS[0]]))[0], v)
    assert e.batcher._task is None  # the batcher (and its model thread) was not needed
    await e.aclose()
