"""Multi-label toxicity scoring for the safety guardrail.

Label names follow Detoxify. Backends sit behind one small interface,
``SafetyScorer``, and are chosen by ``SafetySettings.backend``:

- ``categories`` (default, works offline on a fresh machine): the shared MiniLM
  ``Embedder`` plus two small numpy heads shipped in ``artifacts/``: every harm
  category of ``taxonomy`` (``artifacts/categories/MANIFEST.json``) and the legacy
  ``toxicity`` / ``identity_attack``, from one embedding per window.
- ``minilm-head``: the legacy head alone (``toxicity``, ``identity_attack``; see
  ``artifacts/MANIFEST.json``).
- ``detoxify``: a local Detoxify checkpoint (sha256-pinned) plus a local
  config/tokenizer directory; never touches the network.
- ``none``: no scorer.

Long texts are split into overlapping token windows; a text's score per label is
the max over its windows, so nothing is silently truncated.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from evaluators.safety.labels import LABELS as LABELS

if TYPE_CHECKING:
    from evaluators.embedding import Embedder
    from gatehouse_core.settings import SafetySettings


@runtime_checkable
class SafetyScorer(Protocol):
    name: str  # backend@artifact-sha12, recorded in traffic records and reports
    labels: tuple[str, ...]
    # the taxonomy categories it produces and the ISO 639-1 languages it covers
    # (evaluators.safety.taxonomy / evaluators.safety.language)
    languages: frozenset[str]

    @property
    def categories(self) -> frozenset[str]: ...

    def score_batch(self, texts: list[str]) -> list[dict[str, float]]: ...

    async def ascore(self, texts: list[str]) -> list[dict[str, float]]: ...


def _resolve(base_dir: str | Path, p: str | None) -> Path | None:
    if p is None:
        return None
    path = Path(p).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def load_scorer(
    settings: SafetySettings,
    base_dir: str | Path = ".",
    embedder: Embedder | None = None,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> SafetyScorer | None:
    """Build the configured scorer (None for ``backend: none``).

    Relative paths resolve against ``base_dir`` (pass the config file's directory).
    ``on_batch`` observes each micro-batch size (e.g. a histogram metric).
    For ``categories`` / ``minilm-head`` pass the process-wide ``embedder`` (``services.embedder()``) so
    grounding reuses its cached vectors; without one, ``shared_embedder(model_dir)`` is used.

    Also loads the language-ID model: every safety check detects the text's language
    first (``policies.cascade``), and loading it lazily stalled the gateway's event loop
    for ~1 s on the first request (``tests/bench/bench_adversarial.py``). Callers load
    the scorer at startup, in a worker thread.
    """
    scorer = _build_scorer(settings, base_dir, embedder, on_batch=on_batch)
    if scorer is not None:
        from evaluators.safety.language import warm_up

        warm_up()
    return scorer


def _build_scorer(
    settings: SafetySettings,
    base_dir: str | Path,
    embedder: Embedder | None,
    *,
    on_batch: Callable[[int], None] | None,
) -> SafetyScorer | None:
    max_wait = settings.max_wait_ms / 1000.0
    if settings.backend == "none":
        return None
    if settings.backend in ("categories", "minilm-head") and embedder is None:
        from evaluators.embedding import shared_embedder

        embedder = shared_embedder(_resolve(base_dir, settings.model_dir))
    if settings.backend == "categories":
        from evaluators.safety.categories import CategoryScorer

        assert embedder is not None
        return CategoryScorer(
            embedder,
            _resolve(base_dir, settings.artifact_dir),
            legacy_head=_resolve(base_dir, settings.head),
            max_batch=settings.max_batch,
            max_wait=max_wait,
            on_batch=on_batch,
        )
    if settings.backend == "minilm-head":
        from evaluators.safety.minilm_head import MiniLMHeadScorer

        assert embedder is not None
        return MiniLMHeadScorer(
            embedder,
            head_path=_resolve(base_dir, settings.head),
            max_batch=settings.max_batch,
            max_wait=max_wait,
            on_batch=on_batch,
        )
    if settings.backend == "detoxify":
        from evaluators.safety.detoxify_backend import DetoxifyScorer

        checkpoint = _resolve(base_dir, settings.checkpoint)
        model_dir = _resolve(base_dir, settings.model_dir)
        if checkpoint is None or model_dir is None or not settings.checkpoint_sha256:
            raise ValueError(
                "safety.backend 'detoxify' needs safety.checkpoint (a local .ckpt), "
                "safety.checkpoint_sha256 (run `sha256sum <ckpt>`) and safety.model_dir "
                "(a local directory with the base model's config.json and tokenizer files); "
                "it never downloads anything"
            )
        return DetoxifyScorer(
            checkpoint,
            model_dir,
            checkpoint_sha256=settings.checkpoint_sha256,
            max_batch=settings.max_batch,
            max_wait=max_wait,
            on_batch=on_batch,
        )
    raise ValueError(f"unknown safety backend {settings.backend!r}")  # pragma: no cover


__all__ = ["LABELS", "SafetyScorer", "load_scorer"]
