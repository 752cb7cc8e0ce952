"""ONNX Runtime encoder for sentence-transformers models (the fast CPU path).

The serving path embeds every prompt and every streamed window, so the encoder's
cost per text is the guardrails' cost per request. On this project's 2-core
benchmark box, on one thread, ONNX Runtime fp32 was about 2x cheaper than PyTorch
with the same vectors (cosine 1.0000) and int8 weights about 5x cheaper (cosine
0.989 or more to PyTorch): ``python tests/bench/bench_embedding.py``, figures in
docs/benchmarks.md.

The graph is exported here from the local model with ``torch.onnx.export`` (no
download, no optimum), with the sentence-transformers pooling and L2
normalisation inside it, then optionally quantised (dynamic int8, per output
channel, MatMul weights only: the embedding tables stay fp32). The result is
cached on disk keyed by the model's weight fingerprint and the recipe version,
written to a temporary name and renamed, so concurrent workers never see half a
file. A session runs one intra-op thread by default: on small shared boxes the
event loop needs the other core.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger("gatehouse.embedding")

OnnxVariant = Literal["fp32", "int8"]
# Bump when the export or quantisation recipe changes: cached files then rebuild.
RECIPE_VERSION = 1
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def default_cache_dir() -> Path:
    env = os.environ.get("GATEHOUSE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "gatehouse"


def pooling_mode(model_dir: Path) -> Literal["mean", "cls"]:
    """The pooling a sentence-transformers directory declares (mean or CLS)."""
    modules = model_dir / "modules.json"
    if not modules.exists():
        return "mean"
    for m in json.loads(modules.read_text()):
        if m.get("type", "").endswith("Pooling"):
            cfg = json.loads((model_dir / m.get("path", "") / "config.json").read_text())
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
            modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
            raise ValueError(
                f"{model_dir}: pooling {modes} is not supported by the ONNX runtime "
                "(mean and CLS are); set embedding.runtime: torch for this model"
            )
    return "mean"


def _export(model_dir: Path, out: Path, pooling: str) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar in a server log is noise
    try:
        model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            h = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            if pooling == "cls":
                v = h[:, 0]
            else:
                m = attention_mask.unsqueeze(-1).to(h.dtype)
                v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(v, dim=-1)

    sample = tok(["a short sample", "and a second, longer sample text"], padding=True, return_tensors="pt")
    if "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    axes = {k: {0: "batch", 1: "tokens"} for k in INPUTS}
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer warnings
        torch.onnx.export(
            Pooled().eval(),
            tuple(sample[k] for k in INPUTS),
            str(out),
            input_names=list(INPUTS),
            output_names=["embedding"],
            dynamic_axes={**axes, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def build_onnx(model_dir: Path, fingerprint: str, variant: OnnxVariant, cache_dir: Path | None = None) -> Path:
    """Return the cached ONNX file for this model and variant, exporting it if needed."""
    cache = (cache_dir or default_cache_dir()) / "onnx"
    name = f"{fingerprint[:16]}-r{RECIPE_VERSION}-{variant}.onnx"
    path = cache / name
    if path.exists():
        return path
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=cache, prefix=".probe-")
        probe.close()
    except OSError as exc:  # e.g. a read-only root filesystem without a baked cache
        fallback = Path(tempfile.mkdtemp(prefix="gatehouse-onnx-"))
        atexit.register(shutil.rmtree, fallback, True)
        log.warning(
            "ONNX cache %s is not writable (%s); exporting to %s for this process only. "
            "Set embedding.cache_dir or GATEHOUSE_CACHE_DIR to a writable or pre-built directory",
            cache, exc, fallback,
        )
        cache, path = fallback, fallback / name
    pooling = pooling_mode(model_dir)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        log.info("exporting %s to ONNX (%s, once; cached in %s)", model_dir, variant, cache)
        _export(model_dir, fp32, pooling)
        result = fp32
        if variant == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            result = Path(tmp) / "int8.onnx"
            # onnxruntime's quantiser logs to the root logger: a line per tensor at INFO and a
            # hint to run its pre-processing first (that pass fails on this graph, "Incomplete
            # symbolic shape inference"); both are noise in a gateway's log
            hint = _QuietOnnxRuntime()
            logging.getLogger().addFilter(hint)
            try:
                quantize_dynamic(
                    fp32, result, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
                )
            finally:
                logging.getLogger().removeFilter(hint)
        os.replace(result, path)  # atomic: a concurrent worker sees no file or the whole file
    return path


class _QuietOnnxRuntime(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" not in record.pathname:
            return True
        return record.levelno >= logging.ERROR


class OnnxEncoder:
    """Tokenise, pad per length-sorted sub-batch, run the pooled ONNX graph."""

    def __init__(
        self, onnx_path: Path, tokenizer: Any, max_tokens: int, threads: int = 1, *, one_text_per_run: bool = False
    ) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.dimension = int(self.session.get_outputs()[0].shape[-1])
        # Dynamic int8 quantises activations with one scale per tensor, so in a batch a
        # text's vector would depend on its neighbours and their padding (seen: 0.03 per
        # component): a guardrail verdict must not depend on concurrent traffic. One text
        # per run is deterministic and, measured here, no slower (55 ms per 16 mixed texts
        # one by one, 47 ms in length-sorted runs of 4, 75 ms in one padded run of 16).
        self.one_text_per_run = one_text_per_run

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_tokens, padding=False, verbose=False
        )
        ids: list[list[int]] = enc["input_ids"]
        types: list[list[int]] = enc.get("token_type_ids") or [[0] * len(x) for x in ids]
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        # Sorted by length, so a 20-token prompt is not padded to a 250-token reply.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        if self.one_text_per_run:
            batch_size = 1
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            token_types = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                n = len(ids[i])
                input_ids[r, :n] = ids[i]
                mask[r, :n] = 1
                token_types[r, :n] = types[i]
            vecs = self.session.run(
                None, {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_types}
            )[0]
            out[rows] = vecs
        return out
