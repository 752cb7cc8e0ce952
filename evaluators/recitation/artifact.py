"""On-disk form of a recitation index: JSON + .npy + UTF-8 text, never pickle.

Layout of an index directory::

    manifest.json        parameters, sources, versions, content hash (written last)
    minhash.npy          (windows, num_perm) uint32 MinHash values per corpus window
    windows.npy          (windows, 3) int64 [source, start_word, end_word)
    shingles.npy         (words,) uint64 hash of the shingle starting at each word
    word_spans.npy       (words, 2) int64 character span of each word in its text
    texts/NNNN.txt       the source texts, to quote the matched span back

The directory is written next to its destination under a temporary name and
renamed into place, so a reader sees either the old index or the new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.recitation.errors import IndexFormatError

MANIFEST = "manifest.json"


def array_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def bytes_array(data: bytes, name: str) -> np.ndarray:
    try:
        arr: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
        return arr
    except ValueError as exc:  # an object array would need pickle: refuse, it is not ours
        raise IndexFormatError(f"{name} is not a plain numeric .npy array: {exc}") from exc


def content_hash(files: Mapping[str, bytes]) -> str:
    """sha256 over every data file (name, length, bytes) in name order."""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(name.encode())
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform/filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic_dir(out_dir: Path, files: Mapping[str, bytes], manifest: dict[str, Any]) -> None:
    """Write ``files`` and the manifest to ``out_dir`` all at once or not at all."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / MANIFEST).is_file():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise IndexFormatError(
                f"{out_dir} exists and is not a recitation index; refusing to replace it "
                "(choose a new output path or remove it)"
            )
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = parent / f".{out_dir.name}.tmp-{tag}"
    old = parent / f".{out_dir.name}.old-{tag}"
    try:
        tmp.mkdir()
        for name, data in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        # The manifest goes last: a directory without one is never a valid index.
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if out_dir.exists():
            os.replace(out_dir, old)  # rename of a directory onto a non-empty one fails
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(old, out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(index_dir: Path) -> dict[str, Any]:
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    if not index_dir.is_dir() or not path.is_file():
        raise IndexFormatError(
            f"no recitation index at {index_dir} (missing {MANIFEST}); build one with "
            f"`gatehouse recitation build CORPUS_DIR -o {index_dir}`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"unreadable manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"manifest {path} is not a JSON object")
    return manifest


def read_files(index_dir: Path, names: list[str]) -> dict[str, bytes]:
    root = Path(index_dir).resolve()
    out: dict[str, bytes] = {}
    for name in names:
        path = (root / name).resolve()
        if root not in path.parents:
            raise IndexFormatError(f"manifest lists a file outside the index: {name!r}")
        try:
            out[name] = path.read_bytes()
        except OSError as exc:
            raise IndexFormatError(f"index file missing or unreadable: {path} ({exc})") from exc
    return out
