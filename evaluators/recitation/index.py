"""Recitation index: does a model output copy a passage of a protected corpus?

Books are cut into overlapping windows of ``window_words`` words every
``stride_words`` words; each window is a set of ``shingle_words``-word shingles
summarised by a datasketch MinHash. Whole-document similarity cannot see a
100-word copy from a 100,000-word book (Jaccard ~0.05), a window can.

A query text is scanned with windows of ``query_window_words`` words (by default
``window_words - stride_words``, so any query window lies entirely inside some
corpus window) every ``query_stride_words`` words. The MinHash LSH proposes
candidate corpus windows; each candidate is verified exactly by *containment*,
``|shingles(query window) & shingles(corpus window)| / |shingles(query window)|``.
The best verified score at or above ``threshold`` is a match.
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
    Tokens,
    minhash_inputs,
    shingle_hashes,
    tokenize,
)

FORMAT = "gatehouse-recitation-index"
FORMAT_VERSION = 1
MINHASH_SCHEME = "affine32"  # datasketch 2.x default; 1.x ("legacy") values are not comparable
MINHASH_SEED = 1
DEFAULT_INCLUDE = ("*.txt",)
DEFAULT_EXCLUDE = ("LICENSE*", "LICENCE*", "README*", "*NOTICE*")
# MinHash estimates of a 0.2 Jaccard carry ~±0.07 noise at 128 permutations: ask the
# LSH for candidates well below the exact threshold, then verify exactly.
LSH_SLACK = 0.7
LSH_WEIGHTS = (0.3, 0.7)  # (false positive, false negative): candidates are cheap to verify


@dataclass(frozen=True)
class RecitationMatch:
    """The best corpus window a query recites. ``score`` is exact containment."""

    source: str
    score: float
    matched_span: str  # corpus text from the first to the last shared shingle
    window_start_word: int  # the corpus window, in words of ``source``
    window_end_word: int
    query_span: str  # query text from the first to the last shared shingle

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    @classmethod
    def derive(
        cls,
        *,
        window_words: int,
        stride_words: int,
        shingle_words: int,
        num_perm: int,
        threshold: float,
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
            raise ValueError(f"threshold is a containment in (0, 1], got {threshold}")
        qwin = max(window_words - stride_words, window_words // 2, 2 * shingle_words)
        qstride = max(1, qwin // 5)
        q = qwin - shingle_words + 1
        w = window_words - shingle_words + 1
        shared = threshold * q
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
    ) -> None:
        self.manifest = manifest
        p = manifest["params"]
        self.params = IndexParams(**p)
        self._texts = texts
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
        shingle_words: int = 5,
        num_perm: int = 128,
        threshold: float = 0.5,
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
            )
        except ValueError as exc:
            raise RecitationError(str(exc)) from exc
        corpus = _read_corpus(Path(corpus_dir), include, exclude)
        k = params.shingle_words

        texts: list[str] = []
        sources: list[dict[str, Any]] = []
        shingle_parts: list[np.ndarray] = []
        span_parts: list[np.ndarray] = []
        window_rows: list[tuple[int, int, int]] = []
        offset = 0
        for name, raw in corpus:
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise CorpusError(f"{name} is not UTF-8 text: {exc}") from exc
            tokens = tokenize(text)
            n = len(tokens)
            padded = np.zeros(n, dtype=np.uint64)
            padded[: max(n - k + 1, 0)] = shingle_hashes(tokens.words, k)
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
            raise IndexFormatError(
                f"{index_dir} is not a {FORMAT} v{FORMAT_VERSION} index "
                f"(format={manifest.get('format')!r}, version={manifest.get('format_version')!r}); "
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
            IndexParams(**manifest["params"])
        except (KeyError, TypeError) as exc:
            raise IndexFormatError(f"manifest of {index_dir} is incomplete: {exc}") from exc
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
        ):
            raise IndexFormatError(f"index {index_dir} has arrays of inconsistent shapes")
        return cls(
            manifest=manifest,
            texts=texts,
            minhashes=minhashes,
            windows=windows,
            shingles=shingles,
            word_spans=word_spans,
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
        """The best-scoring LSH candidate whatever its score (for calibration)."""
        p = self.params
        k = p.shingle_words
        tokens = tokenize(text)
        n = len(tokens)
        if n < p.min_query_words:
            return None
        qsh = shingle_hashes(tokens.words, k)
        qin = minhash_inputs(qsh)
        window_sets: dict[int, np.ndarray] = {}
        # (score, hits, -window): ties go to the earliest window, whatever the set order
        best: tuple[float, int, int, int, int] | None = None  # score, hits, -cand, start, end
        for start in _window_starts(n, p.query_window_words, p.query_stride_words):
            end = min(start + p.query_window_words, n)
            q = np.unique(qsh[start : end - k + 1])
            m = self._template.copy()
            m.update_batch(np.unique(qin[start : end - k + 1]).tolist())
            for cand in self._lsh.query(m):
                ws = window_sets.get(cand)
                if ws is None:
                    ws = window_sets[cand] = np.unique(self._window_shingles(cand))
                hits = int(np.isin(q, ws, assume_unique=True).sum())
                score = hits / len(q)
                if best is None or (score, hits, -cand) > best[:3]:
                    best = (score, hits, -cand, start, end)
            if best is not None and best[0] >= 1.0:
                break  # nothing can beat a full copy; long recitations stay cheap
        if best is None or best[1] == 0:
            return None
        score, _, neg_cand, qstart, qend = best
        return self._describe(text, tokens, qsh, score, -neg_cand, qstart, qend)

    def _window_shingles(self, window: int) -> np.ndarray:
        src, start, end = (int(x) for x in self._windows[window])
        base = int(self._offsets[src])
        return self._shingles[base + start : base + end - self.params.shingle_words + 1]

    def _describe(
        self,
        text: str,
        tokens: Tokens,
        qsh: np.ndarray,
        score: float,
        cand: int,
        qstart: int,
        qend: int,
    ) -> RecitationMatch:
        k = self.params.shingle_words
        src, wstart, wend = (int(x) for x in self._windows[cand])
        base = int(self._offsets[src])
        ws = self._window_shingles(cand)
        q = qsh[qstart : qend - k + 1]
        in_window = np.flatnonzero(np.isin(ws, q))
        in_query = np.flatnonzero(np.isin(q, ws))
        c0, c1 = base + wstart + int(in_window[0]), base + wstart + int(in_window[-1]) + k - 1
        q0, q1 = qstart + int(in_query[0]), qstart + int(in_query[-1]) + k - 1
        corpus = self._texts[src]
        return RecitationMatch(
            source=self._names[src],
            score=round(float(score), 4),
            matched_span=corpus[self._word_spans[c0, 0] : self._word_spans[c1, 1]],
            window_start_word=wstart,
            window_end_word=wend,
            query_span=text[tokens.spans[q0, 0] : tokens.spans[q1, 1]],
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
