"""Recitation index: does a model output copy a passage of a protected corpus?

Books are cut into overlapping windows of ``window_words`` words every
``stride_words`` words; each window is a set of ``shingle_words``-word shingles
summarised by a datasketch MinHash. Whole-document similarity cannot see a
100-word copy from a 100,000-word book (Jaccard ~0.05), a window can.

A query text is scanned with windows of ``query_window_words`` tokens (by default
``window_words - stride_words``, so any query window lies entirely inside some
corpus window) every ``query_stride_words`` tokens. The MinHash LSH proposes
candidate corpus windows (small shingles, so a copy with scattered edits still
shares enough of them); the few with the highest shingle containment are then
*aligned* token by token (rapidfuzz LCS opcodes). The score is the share of the
query window's tokens matched in order inside verbatim runs of at least
``min_run`` tokens, so one changed word costs one token instead of breaking
``shingle`` shingles, while the scattered common words two unrelated texts share
(``of the``) do not count. The best score at or above ``threshold`` is a match.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import datasketch
import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH
from rapidfuzz.distance import LCSseq

from evaluators.recitation import artifact
from evaluators.recitation.errors import (
    CorpusError,
    IndexFormatError,
    IndexVersionError,
    RecitationError,
)
from evaluators.recitation.text import (
    NORMALISATION,
    SHINGLE_HASH,
    Tokenizer,
    Tokens,
    minhash_inputs,
    shingle_hashes,
    word_hashes,
)

FORMAT = "gatehouse-recitation-index"
# v2: tokens per script (words / morphemes / characters), per-token hashes, aligned scores
FORMAT_VERSION = 2
MINHASH_SCHEME = "affine32"  # datasketch 2.x default; 1.x ("legacy") values are not comparable
MINHASH_SEED = 1
DEFAULT_INCLUDE = ("*.txt",)
DEFAULT_EXCLUDE = ("LICENSE*", "LICENCE*", "README*", "*NOTICE*")
# MinHash estimates of a 0.2 Jaccard carry ~±0.07 noise at 128 permutations: ask the
# LSH for candidates well below the exact threshold, then verify exactly.
LSH_SLACK = 0.7
LSH_WEIGHTS = (0.3, 0.7)  # (false positive, false negative): candidates are cheap to verify
# Defaults picked by measurement (docs/recitation.md, `python -m evaluators.recitation.quality`).
DEFAULT_SHINGLE = 4
DEFAULT_MIN_RUN = 3
DEFAULT_SCORE_FLOOR = 40
DEFAULT_CANDIDATE_CONTAINMENT = 0.25
DEFAULT_THRESHOLD = 0.55  # calibrated: `quality --part first --calibrate` (docs/recitation.md)
GAP = 8  # tokens between two aligned runs that still belong to one copied passage
ALIGN_TOP = 3  # candidates per query window that are aligned (highest shingle containment first)


@dataclass(frozen=True)
class RecitationMatch:
    """The best corpus window a query recites.

    ``score`` is the share of the query window's tokens matched in order, in runs of
    at least ``min_run`` tokens; ``longest_run`` is the longest verbatim run.
    ``source_start``/``source_end`` are character offsets of ``matched_span`` in the
    source text, ``query_start``/``query_end`` those of ``query_span`` in the query.
    """

    source: str
    score: float
    matched_span: str  # source text from the first to the last aligned run
    window_start_word: int  # the corpus window, in tokens of ``source``
    window_end_word: int
    query_span: str  # query text from the first to the last aligned run
    longest_run: int = 0
    matched_tokens: int = 0
    source_start: int = 0
    source_end: int = 0
    query_start: int = 0
    query_end: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Alignment:
    score: float
    longest_run: int
    matched: int
    qstart: int  # query token where the aligned query window starts
    wstart: int
    runs: list[tuple[int, int, int, int]]  # kept runs: query [s, e), window [s, e)


def datasketch_major(version: str) -> int:
    try:
        return int(version.split(".", 1)[0])
    except ValueError as exc:
        raise IndexVersionError(f"unparseable datasketch version {version!r}") from exc


def _prehashed(value: int) -> int:
    """MinHash hash function for values that are already 32-bit shingle hashes."""
    return value


@dataclass(frozen=True)
class IndexParams:
    window_words: int
    stride_words: int
    shingle_words: int
    num_perm: int
    threshold: float
    query_window_words: int
    query_stride_words: int
    min_query_words: int
    lsh_bands: int
    lsh_rows: int
    min_run: int
    score_floor: int
    candidate_containment: float
    cjk: str

    @classmethod
    def derive(
        cls,
        *,
        window_words: int,
        stride_words: int,
        shingle_words: int,
        num_perm: int,
        threshold: float,
        min_run: int = 3,
        score_floor: int = 40,
        candidate_containment: float = 0.25,
        cjk: str = "morpheme",
    ) -> IndexParams:
        if shingle_words < 1:
            raise ValueError(f"shingle_words must be >= 1, got {shingle_words}")
        if window_words < 2 * shingle_words:
            raise ValueError(
                f"window_words ({window_words}) must be at least twice shingle_words "
                f"({shingle_words}); try --window 100 --shingle 5"
            )
        if not 1 <= stride_words <= window_words:
            raise ValueError(
                f"stride_words must be in [1, window_words={window_words}], got {stride_words}; "
                "half the window is a good default"
            )
        if not 2 <= num_perm <= 1024:
            raise ValueError(f"num_perm must be in [2, 1024], got {num_perm}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold is a share of aligned tokens in (0, 1], got {threshold}")
        if not 1 <= min_run <= shingle_words * 4:
            raise ValueError(f"min_run must be in [1, {shingle_words * 4}], got {min_run}")
        if not 0.0 < candidate_containment <= 1.0:
            raise ValueError(f"candidate_containment must be in (0, 1], got {candidate_containment}")
        Tokenizer(cjk)  # validates the unit
        qwin = max(window_words - stride_words, window_words // 2, 2 * shingle_words)
        qstride = max(1, qwin // 5)
        q = qwin - shingle_words + 1
        w = window_words - shingle_words + 1
        # the LSH is sized for edited copies (few shared shingles), not for the decision threshold
        shared = candidate_containment * q
        jaccard = LSH_SLACK * shared / (q + w - shared)
        # Let datasketch pick (bands, rows) for that threshold; stored so load needn't.
        probe = MinHashLSH(threshold=jaccard, num_perm=num_perm, weights=LSH_WEIGHTS)
        bands, rows = probe.b, probe.r
        return cls(
            window_words=window_words,
            stride_words=stride_words,
            shingle_words=shingle_words,
            num_perm=num_perm,
            threshold=threshold,
            query_window_words=qwin,
            query_stride_words=qstride,
            min_query_words=min(qwin, max(20, 3 * shingle_words)),
            lsh_bands=int(bands),
            lsh_rows=int(rows),
            min_run=min_run,
            score_floor=max(score_floor, 1),
            candidate_containment=candidate_containment,
            cjk=cjk,
        )


def _window_starts(n: int, window: int, stride: int) -> list[int]:
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] + window < n:
        starts.append(n - window)  # the tail of the text gets a window too
    return starts


def _read_corpus(
    corpus_dir: Path, include: Sequence[str], exclude: Sequence[str]
) -> list[tuple[str, bytes]]:
    if not corpus_dir.exists():
        raise CorpusError(f"corpus directory {corpus_dir} does not exist")
    if not corpus_dir.is_dir():
        raise CorpusError(f"corpus path {corpus_dir} is not a directory")
    found: list[tuple[str, bytes]] = []
    for path in sorted(p for p in corpus_dir.rglob("*") if p.is_file()):
        name = path.relative_to(corpus_dir).as_posix()
        if not any(fnmatch.fnmatch(path.name, pat) for pat in include):
            continue
        if any(fnmatch.fnmatch(path.name, pat) for pat in exclude):
            continue
        try:
            found.append((name, path.read_bytes()))
        except OSError as exc:
            raise CorpusError(f"cannot read {path}: {exc}") from exc
    if not found:
        raise CorpusError(
            f"corpus directory {corpus_dir} has no files matching {', '.join(include)} "
            f"(excluding {', '.join(exclude) or 'nothing'})"
        )
    return found


class RecitationIndex:
    """An in-process MinHash LSH over corpus windows plus what exact checks need."""

    def __init__(
        self,
        *,
        manifest: dict[str, Any],
        texts: list[str],
        minhashes: np.ndarray,
        windows: np.ndarray,
        shingles: np.ndarray,
        word_spans: np.ndarray,
        token_hashes: np.ndarray,
    ) -> None:
        self.manifest = manifest
        p = manifest["params"]
        self.params = IndexParams(**p)
        self.tokenizer = Tokenizer(self.params.cjk)
        self._texts = texts
        self._token_hashes = token_hashes
        self._names = [s["name"] for s in manifest["sources"]]
        self._offsets = np.array([s["word_offset"] for s in manifest["sources"]], dtype=np.int64)
        self._minhashes = minhashes
        self._windows = windows
        self._shingles = shingles
        self._word_spans = word_spans
        self._template = MinHash(
            num_perm=self.params.num_perm,
            seed=MINHASH_SEED,
            hashfunc=_prehashed,
            scheme=MINHASH_SCHEME,
        )
        self._lsh = MinHashLSH(
            num_perm=self.params.num_perm, params=(self.params.lsh_bands, self.params.lsh_rows)
        )
        with self._lsh.insertion_session() as session:
            for i in range(len(windows)):
                lean = LeanMinHash(
                    seed=MINHASH_SEED, hashvalues=minhashes[i], scheme=MINHASH_SCHEME
                )
                session.insert(i, lean, check_duplication=False)
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        corpus_dir: str | Path,
        *,
        window_words: int = 100,
        stride_words: int = 50,
        shingle_words: int = DEFAULT_SHINGLE,
        num_perm: int = 128,
        threshold: float = DEFAULT_THRESHOLD,
        min_run: int = DEFAULT_MIN_RUN,
        score_floor: int = DEFAULT_SCORE_FLOOR,
        candidate_containment: float = DEFAULT_CANDIDATE_CONTAINMENT,
        cjk: str = "morpheme",
        progress: bool = True,
        include: Sequence[str] = DEFAULT_INCLUDE,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
    ) -> RecitationIndex:
        """Index every ``include``-matching file under ``corpus_dir`` (UTF-8 text)."""
        try:
            params = IndexParams.derive(
                window_words=window_words,
                stride_words=stride_words,
                shingle_words=shingle_words,
                num_perm=num_perm,
                threshold=threshold,
                min_run=min_run,
                score_floor=score_floor,
                candidate_containment=candidate_containment,
                cjk=cjk,
            )
        except ValueError as exc:
            raise RecitationError(str(exc)) from exc
        corpus = _read_corpus(Path(corpus_dir), include, exclude)
        k = params.shingle_words
        tokenizer = Tokenizer(params.cjk)

        texts: list[str] = []
        sources: list[dict[str, Any]] = []
        shingle_parts: list[np.ndarray] = []
        token_parts: list[np.ndarray] = []
        span_parts: list[np.ndarray] = []
        window_rows: list[tuple[int, int, int]] = []
        offset = 0
        for name, raw in corpus:
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise CorpusError(f"{name} is not UTF-8 text: {exc}") from exc
            tokens = tokenizer(text)
            n = len(tokens)
            wh = word_hashes(tokens.words)
            padded = np.zeros(n, dtype=np.uint64)
            padded[: max(n - k + 1, 0)] = shingle_hashes(tokens.words, k, wh)
            token_parts.append(wh)
            src = len(sources)
            if n >= k:
                for start in _window_starts(n, params.window_words, params.stride_words):
                    window_rows.append((src, start, min(start + params.window_words, n)))
            texts.append(text)
            shingle_parts.append(padded)
            span_parts.append(tokens.spans)
            sources.append(
                {
                    "name": name,
                    "sha256": hashlib.sha256(raw).hexdigest(),
                    "bytes": len(raw),
                    "words": n,
                    "word_offset": offset,
                    "text_file": f"texts/{src:04d}.txt",
                }
            )
            offset += n
        if not window_rows:
            raise CorpusError(
                f"corpus directory {corpus_dir} has no text to index "
                f"(every file has fewer than {k} words)"
            )

        shingles = np.concatenate(shingle_parts)
        token_hashes = np.concatenate(token_parts).astype(np.uint64)
        word_spans = np.concatenate(span_parts).astype(np.int64).reshape(-1, 2)
        windows = np.asarray(window_rows, dtype=np.int64)
        mh_in = minhash_inputs(shingles)
        offsets = np.array([s["word_offset"] for s in sources], dtype=np.int64)
        template = MinHash(
            num_perm=params.num_perm, seed=MINHASH_SEED, hashfunc=_prehashed, scheme=MINHASH_SCHEME
        )
        minhashes = np.empty((len(windows), params.num_perm), dtype=np.uint32)
        rows: Iterable[int] = range(len(windows))
        if progress:
            from tqdm import tqdm

            rows = tqdm(rows, desc="recitation windows", unit="win", disable=None)
        for i in rows:
            src, start, end = (int(x) for x in windows[i])
            base = int(offsets[src])
            m = template.copy()
            m.update_batch(np.unique(mh_in[base + start : base + end - k + 1]).tolist())
            minhashes[i] = m.hashvalues

        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sources": sources,
            "window_words": params.window_words,
            "stride_words": params.stride_words,
            "shingle_words": params.shingle_words,
            "num_perm": params.num_perm,
            "threshold": params.threshold,
            "params": asdict(params),
            "datasketch_version": datasketch.__version__,
            "minhash_scheme": MINHASH_SCHEME,
            "minhash_seed": MINHASH_SEED,
            "normalisation": NORMALISATION,
            "shingle_hash": SHINGLE_HASH,
            "tokenizer": tokenizer.spec(),
            "scoring": "aligned-runs-v1",
            "windows": len(windows),
            "words": len(shingles),
        }
        index = cls(
            manifest=manifest,
            texts=texts,
            minhashes=minhashes,
            windows=windows,
            shingles=shingles,
            word_spans=word_spans,
            token_hashes=token_hashes,
        )
        files = index._files()
        manifest["files"] = sorted(files)
        manifest["content_sha256"] = artifact.content_hash(files)
        manifest["index_id"] = f"rec-{manifest['content_sha256'][:16]}"
        return index

    # ------------------------------------------------------------ save / load

    def _files(self) -> dict[str, bytes]:
        files = {
            "minhash.npy": artifact.array_bytes(self._minhashes),
            "windows.npy": artifact.array_bytes(self._windows),
            "shingles.npy": artifact.array_bytes(self._shingles),
            "word_spans.npy": artifact.array_bytes(self._word_spans),
            "tokens.npy": artifact.array_bytes(self._token_hashes),
        }
        for source, text in zip(self.manifest["sources"], self._texts, strict=True):
            files[source["text_file"]] = text.encode("utf-8")
        return files

    def save(self, out_dir: str | Path) -> None:
        """Write the index; atomic (temp dir + rename), replacing an older index."""
        artifact.write_atomic_dir(Path(out_dir), self._files(), self.manifest)

    @classmethod
    def load(cls, index_dir: str | Path) -> RecitationIndex:
        """Read and verify an index written by ``save``; rebuilds the LSH in process."""
        index_dir = Path(index_dir)
        manifest = artifact.read_manifest(index_dir)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            old = manifest.get("format") == FORMAT and manifest.get("format_version") == 1
            why = (
                " (v1 indexes cut Japanese and other unspaced scripts into one token per sentence "
                "and score by shingle containment only)" if old else ""
            )
            raise IndexFormatError(
                f"{index_dir} is not a {FORMAT} v{FORMAT_VERSION} index "
                f"(format={manifest.get('format')!r}, version={manifest.get('format_version')!r}){why}; "
                "rebuild it with `gatehouse recitation build`"
            )
        built = str(manifest.get("datasketch_version", "unknown"))
        if datasketch_major(built) != datasketch_major(datasketch.__version__):
            raise IndexVersionError(
                f"index {index_dir} was built with datasketch {built} but this process runs "
                f"datasketch {datasketch.__version__}: MinHash values differ between major "
                "versions, so matches would be silently wrong. Rebuild the index with "
                "`gatehouse recitation build` under the installed datasketch."
            )
        for key, ours in (
            ("minhash_scheme", MINHASH_SCHEME),
            ("minhash_seed", MINHASH_SEED),
            ("normalisation", NORMALISATION),
            ("shingle_hash", SHINGLE_HASH),
        ):
            if manifest.get(key) != ours:
                raise IndexVersionError(
                    f"index {index_dir} uses {key}={manifest.get(key)!r}, this code uses "
                    f"{ours!r}; rebuild the index with `gatehouse recitation build`"
                )
        try:
            names = list(manifest["files"])
            expected = str(manifest["content_sha256"])
            sources = manifest["sources"]
            params = IndexParams(**manifest["params"])
            ours_tok = Tokenizer(params.cjk).spec()
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"manifest of {index_dir} is incomplete: {exc}") from exc
        if manifest.get("tokenizer") != ours_tok:
            raise IndexVersionError(
                f"index {index_dir} was tokenised as {manifest.get('tokenizer')!r}, this process "
                f"tokenises as {ours_tok!r} (another dictionary cuts Japanese differently); "
                "rebuild the index with `gatehouse recitation build`"
            )
        files = artifact.read_files(index_dir, names)
        actual = artifact.content_hash(files)
        if actual != expected:
            raise IndexFormatError(
                f"index {index_dir} is corrupted: content hash {actual[:16]}... does not match "
                f"the manifest's {expected[:16]}...; rebuild it"
            )
        try:
            arrays = {n: artifact.bytes_array(files[n], n) for n in names if n.endswith(".npy")}
            texts = [files[s["text_file"]].decode("utf-8") for s in sources]
            minhashes = arrays["minhash.npy"]
            windows = arrays["windows.npy"]
            shingles = arrays["shingles.npy"]
            word_spans = arrays["word_spans.npy"]
            token_hashes = arrays["tokens.npy"]
        except (KeyError, UnicodeDecodeError) as exc:
            raise IndexFormatError(f"index {index_dir} is missing data: {exc}") from exc
        num_perm = manifest["params"]["num_perm"]
        n_words = sum(int(s["words"]) for s in sources)
        if (
            minhashes.dtype != np.uint32
            or minhashes.shape != (len(windows), num_perm)
            or windows.shape[1:] != (3,)
            or shingles.shape != (n_words,)
            or word_spans.shape != (n_words, 2)
            or token_hashes.shape != (n_words,)
        ):
            raise IndexFormatError(f"index {index_dir} has arrays of inconsistent shapes")
        return cls(
            manifest=manifest,
            texts=texts,
            minhashes=minhashes,
            windows=windows,
            shingles=shingles,
            word_spans=word_spans,
            token_hashes=token_hashes,
        )

    # ------------------------------------------------------------------ query

    @property
    def threshold(self) -> float:
        return self.params.threshold

    def check(self, text: str) -> RecitationMatch | None:
        """The best corpus window ``text`` recites at or above the threshold, else None."""
        best = self.best_match(text)
        if best is None or best.score < self.params.threshold:
            return None
        return best

    def best_match(self, text: str) -> RecitationMatch | None:
        """The best-scoring aligned candidate whatever its score (for calibration)."""
        p = self.params
        k = p.shingle_words
        tokens = self.tokenizer(text)
        n = len(tokens)
        if n < p.min_query_words:
            return None
        qwh = word_hashes(tokens.words)
        qsh = shingle_hashes(tokens.words, k, qwh)
        qin = minhash_inputs(qsh)
        window_sets: dict[int, np.ndarray] = {}
        aligned: dict[tuple[int, int], _Alignment] = {}
        best: tuple[float, int, int, int, int] | None = None  # score, run, -cand, qstart, qend
        for start in _window_starts(n, p.query_window_words, p.query_stride_words):
            end = min(start + p.query_window_words, n)
            q = np.unique(qsh[start : end - k + 1])
            m = self._template.copy()
            m.update_batch(np.unique(qin[start : end - k + 1]).tolist())
            scored = []
            for cand in self._lsh.query(m):
                ws = window_sets.get(cand)
                if ws is None:
                    ws = window_sets[cand] = np.unique(self._window_shingles(cand))
                hits = int(np.isin(q, ws, assume_unique=True).sum())
                if hits:
                    scored.append((hits, -cand))
            # ties go to the earliest window, whatever the LSH's set order
            for _, neg in sorted(scored, reverse=True)[:ALIGN_TOP]:
                a = self._align(qwh, start, end, -neg)
                aligned[(start, -neg)] = a
                key = (a.score, a.longest_run, neg, start, end)
                if best is None or key[:3] > best[:3]:
                    best = key
            if best is not None and best[0] >= 1.0:
                break  # nothing can beat a full copy; long recitations stay cheap
        if best is None or best[0] <= 0.0:
            return None
        _, _, neg_cand, qstart, _ = best
        return self._describe(text, tokens, qwh, aligned[(qstart, -neg_cand)], -neg_cand)

    def _window_shingles(self, window: int) -> np.ndarray:
        src, start, end = (int(x) for x in self._windows[window])
        base = int(self._offsets[src])
        return self._shingles[base + start : base + end - self.params.shingle_words + 1]

    def _align(self, qwh: np.ndarray, qstart: int, qend: int, cand: int) -> _Alignment:
        """In-order alignment of query tokens [qstart, qend) with corpus window ``cand``."""
        src, wstart, wend = (int(x) for x in self._windows[cand])
        base = int(self._offsets[src])
        query = qwh[qstart:qend].tolist()
        window = self._token_hashes[base + wstart : base + wend].tolist()
        runs = [
            (op.src_start, op.src_end, op.dest_start, op.dest_end)
            for op in LCSseq.opcodes(query, window)
            if op.tag == "equal"
        ]
        longest = max((e - s for s, e, _, _ in runs), default=0)
        kept = [r for r in runs if r[1] - r[0] >= self.params.min_run]
        matched = sum(e - s for s, e, _, _ in kept)
        score = matched / max(qend - qstart, self.params.score_floor)
        return _Alignment(score, longest, matched, qstart, wstart, kept)

    def _extent(self, qwh: np.ndarray, a: _Alignment, cand: int) -> tuple[int, int, int, int]:
        """Query and source token ranges of the whole copied passage around the best window.

        The score comes from one query window; the report re-aligns a query window's
        length of context on each side against the source around the corpus window,
        and keeps the runs chained to the best window's runs by gaps of at most
        ``GAP`` tokens, so a long copy is quoted whole and stray common phrases are not.
        """
        p = self.params
        src, wstart, wend = (int(x) for x in self._windows[cand])
        base, n_src = int(self._offsets[src]), int(self.manifest["sources"][src]["words"])
        q_lo = max(0, a.qstart - p.query_window_words)
        q_hi = min(len(qwh), a.qstart + 2 * p.query_window_words)
        c_lo, c_hi = max(0, wstart - p.window_words), min(n_src, wend + p.window_words)
        runs = [
            (q_lo + op.src_start, q_lo + op.src_end, c_lo + op.dest_start, c_lo + op.dest_end)
            for op in LCSseq.opcodes(
                qwh[q_lo:q_hi].tolist(), self._token_hashes[base + c_lo : base + c_hi].tolist()
            )
            if op.tag == "equal" and op.src_end - op.src_start >= p.min_run
        ]
        core = (a.qstart + a.runs[0][0], a.qstart + a.runs[-1][1])
        inside = [i for i, r in enumerate(runs) if r[0] < core[1] and r[1] > core[0]]
        if not inside:
            return core[0], core[1], wstart + a.runs[0][2], wstart + a.runs[-1][3]
        i, j = inside[0], inside[-1]
        while i > 0 and runs[i][0] - runs[i - 1][1] <= GAP and runs[i][2] - runs[i - 1][3] <= GAP:
            i -= 1
        while j + 1 < len(runs) and runs[j + 1][0] - runs[j][1] <= GAP and runs[j + 1][2] - runs[j][3] <= GAP:
            j += 1
        return runs[i][0], runs[j][1], runs[i][2], runs[j][3]

    def _describe(
        self, text: str, tokens: Tokens, qwh: np.ndarray, a: _Alignment, cand: int
    ) -> RecitationMatch:
        src, wstart, wend = (int(x) for x in self._windows[cand])
        base = int(self._offsets[src])
        corpus = self._texts[src]
        if a.runs:
            q0, q1, c0, c1 = self._extent(qwh, a, cand)
            q1, c0, c1 = q1 - 1, base + c0, base + c1 - 1
        else:  # only runs shorter than min_run: quote the window starts, score says it all
            q0 = q1 = a.qstart
            c0 = c1 = base + wstart
        s0, s1 = int(self._word_spans[c0, 0]), int(self._word_spans[c1, 1])
        t0, t1 = int(tokens.spans[q0, 0]), int(tokens.spans[q1, 1])
        return RecitationMatch(
            source=self._names[src],
            score=round(float(a.score), 4),
            matched_span=corpus[s0:s1],
            window_start_word=wstart,
            window_end_word=wend,
            query_span=text[t0:t1],
            longest_run=a.longest_run,
            matched_tokens=a.matched,
            source_start=s0,
            source_end=s1,
            query_start=t0,
            query_end=t1,
        )

    async def acheck(self, text: str) -> RecitationMatch | None:
        """``check`` in the index's worker thread."""
        return await self._in_thread(self.check, text)

    async def abest_match(self, text: str) -> RecitationMatch | None:
        """``best_match`` in the index's worker thread: the caller applies its own threshold."""
        return await self._in_thread(self.best_match, text)

    async def _in_thread(self, fn: Any, text: str) -> RecitationMatch | None:
        # one thread keeps the (GIL-bound) checks off the event loop; each caller is
        # released when its own check ends (batching would hold it for the others)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recitation")
        result: RecitationMatch | None = await asyncio.get_running_loop().run_in_executor(self._executor, fn, text)
        return result

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
