"""Artifact registry and lineage for the MLOps loop.

Every artifact the loop produces or consumes (a dataset, a job run, a model, a
prompt version, a grounding or recitation index, an eval report, a deployment)
is one row with an id, a content hash, JSON metadata and links to its parents.

Ids are ``kind:name:hash12``: the kind, a short human name (``[a-z0-9._-]``)
and the first 12 hex digits of the content hash. The content hash is the
sha256 of the artifact's bytes (for a directory: of every file's relative path
and bytes, in sorted order); an artifact without files (a job run, a
deployment) hashes its canonical metadata and parents instead. Registering the
same content under the same name again returns the existing artifact, so
re-running a step is idempotent.

Storage (embedded default): ``<RegistrySettings.path>/registry.db`` (SQLite)
and ``<path>/artifacts/<kind>/<name>-<hash12>/`` where registered files are
copied (or moved) into a temporary sibling first and renamed into place, so a
crash never leaves a half-written artifact under its final name.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatehouse_core import sqlitedb

KINDS = (
    "dataset",
    "job",
    "model",
    "prompt",
    "grounding_index",
    "recitation_index",
    "eval_report",
    "deployment",
)

_NAME_RE = re.compile(r"[^a-z0-9._-]+")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    path TEXT,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_kind ON artifacts(kind, created_at);
CREATE TABLE IF NOT EXISTS links (
    child TEXT NOT NULL REFERENCES artifacts(id),
    parent TEXT NOT NULL REFERENCES artifacts(id),
    PRIMARY KEY (child, parent)
);
CREATE INDEX IF NOT EXISTS links_parent ON links(parent);
"""


class RegistryError(Exception):
    """A registry operation could not be done; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class Artifact:
    id: str
    kind: str
    name: str
    content_hash: str
    path: str | None  # absolute path of the registered copy, or None
    metadata: dict[str, Any]
    created_at: float
    parents: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "content_hash": self.content_hash,
            "path": self.path,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "parents": list(self.parents),
        }


@dataclass(slots=True)
class LineageNode:
    artifact: Artifact
    children: list[LineageNode] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.artifact.id,
            "kind": self.artifact.kind,
            "links": [c.to_dict() for c in self.children],
        }


@dataclass(slots=True)
class Lineage:
    """The ancestors (parents, their parents, ...) and descendants of one artifact."""

    root: Artifact
    ancestors: list[LineageNode]
    descendants: list[LineageNode]
    edges: list[tuple[str, str]]  # (parent, child) over the whole connected lineage

    def ids(self) -> set[str]:
        out = {self.root.id}
        for a, b in self.edges:
            out.update((a, b))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.root.id,
            "ancestors": [n.to_dict() for n in self.ancestors],
            "descendants": [n.to_dict() for n in self.descendants],
            "edges": [list(e) for e in self.edges],
        }

    def render(self) -> str:
        """An indented tree: ancestors above the artifact (upward), descendants below."""
        lines = [f"{self.root.id}"]

        def walk(nodes: list[LineageNode], depth: int, arrow: str) -> None:
            for n in nodes:
                lines.append(f"{'  ' * depth}{arrow} {n.artifact.id}")
                walk(n.children, depth + 1, arrow)

        if self.ancestors:
            lines.append("  ancestors:")
            walk(self.ancestors, 2, "<-")
        if self.descendants:
            lines.append("  descendants:")
            walk(self.descendants, 2, "->")
        return "\n".join(lines)


def slug(name: str) -> str:
    s = _NAME_RE.sub("-", name.strip().lower()).strip("-.")
    return s[:48] or "unnamed"


def hash_path(path: Path) -> str:
    """sha256 over a file's bytes, or over each file's relative path and bytes for a directory."""
    h = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    if not path.is_dir():
        raise RegistryError(f"{path} does not exist; give a file or directory to register")
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode())
            h.update(b"\0")
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
    return h.hexdigest()


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


class Registry:
    """SQLite-backed registry rooted at a directory (``RegistrySettings.path``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir = self.root / "artifacts"
        self.artifacts_dir.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlitedb.connect(self.root / "registry.db")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    @classmethod
    def from_settings(cls, settings: Any) -> Registry:
        """Open the registry named by a gateway ``Settings`` (``registry.path``)."""
        return cls(settings.resolve_path(settings.registry.path))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------

    def register(
        self,
        kind: str,
        path: str | Path | None = None,
        *,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        parents: Sequence[str] = (),
        move: bool = False,
        copy: bool = True,
    ) -> Artifact:
        """Register an artifact; copy (or move) ``path`` into the registry store.

        ``copy=False`` records ``path`` where it is (for large artifacts managed
        elsewhere). Returns the existing artifact if the same id is already
        registered (adding any new parent links).
        """
        if kind not in KINDS:
            raise RegistryError(f"unknown kind {kind!r}; use one of: {', '.join(KINDS)}")
        metadata = dict(metadata or {})
        parents = list(dict.fromkeys(parents))
        for p in parents:
            if self.get(p) is None:
                raise RegistryError(f"parent {p!r} is not registered; register it first (`gatehouse registry list`)")
        src = Path(path) if path is not None else None
        if src is not None:
            content_hash = hash_path(src)
            short = slug(name or src.stem)
        else:
            content_hash = hash_json({"kind": kind, "name": name, "metadata": metadata, "parents": sorted(parents)})
            short = slug(name or kind)
        art_id = f"{kind}:{short}:{content_hash[:12]}"
        existing = self.get(art_id)
        if existing is not None:
            self._link(art_id, parents)
            return self.get(art_id)  # type: ignore[return-value]

        stored: str | None = None
        if src is not None:
            if copy or move:
                dest = self.artifacts_dir / kind / f"{short}-{content_hash[:12]}{src.suffix if src.is_file() else ''}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not dest.exists():
                    tmp = dest.parent / f".tmp-{uuid.uuid4().hex}"
                    if move:
                        shutil.move(str(src), tmp)
                    elif src.is_dir():
                        shutil.copytree(src, tmp)
                    else:
                        shutil.copy2(src, tmp)
                    os.replace(tmp, dest)
                elif move:
                    shutil.rmtree(src) if src.is_dir() else src.unlink()
                stored = str(dest.resolve())
            else:
                stored = str(src.resolve())
        now = time.time()
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO artifacts(id, kind, name, content_hash, path, metadata, created_at) VALUES (?,?,?,?,?,?,?)",
                (art_id, kind, short, content_hash, stored, json.dumps(metadata, sort_keys=True, default=str), now),
            )
        self._link(art_id, parents)
        return self.get(art_id)  # type: ignore[return-value]

    def _link(self, child: str, parents: Iterable[str]) -> None:
        rows = [(child, p) for p in parents if p != child]
        if not rows:
            return
        with self._lock, self._db:
            self._db.executemany("INSERT OR IGNORE INTO links(child, parent) VALUES (?,?)", rows)

    # -- reading -------------------------------------------------------------------------

    def _row(self, row: tuple[Any, ...]) -> Artifact:
        art_id = row[0]
        with self._lock:
            parents = tuple(r[0] for r in self._db.execute("SELECT parent FROM links WHERE child=? ORDER BY parent", (art_id,)))
        return Artifact(
            id=art_id,
            kind=row[1],
            name=row[2],
            content_hash=row[3],
            path=row[4],
            metadata=json.loads(row[5]),
            created_at=row[6],
            parents=parents,
        )

    _COLS = "id, kind, name, content_hash, path, metadata, created_at"

    def get(self, art_id: str) -> Artifact | None:
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLS} FROM artifacts WHERE id=?", (art_id,)).fetchone()
        return self._row(row) if row else None

    def resolve(self, ref: str) -> Artifact:
        """An artifact by full id or by a unique prefix of it (``model:tiny`` is enough)."""
        art = self.get(ref)
        if art is not None:
            return art
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLS} FROM artifacts WHERE id LIKE ? ORDER BY created_at", (ref.replace("%", "") + "%",)
            ).fetchall()
        if len(rows) == 1:
            return self._row(rows[0])
        if not rows:
            raise RegistryError(f"no artifact {ref!r}; see `gatehouse registry list`")
        raise RegistryError(f"{ref!r} matches {len(rows)} artifacts; give more of the id")

    def list(self, kind: str | None = None) -> builtins.list[Artifact]:
        with self._lock:
            if kind:
                rows = self._db.execute(
                    f"SELECT {self._COLS} FROM artifacts WHERE kind=? ORDER BY created_at, id", (kind,)
                ).fetchall()
            else:
                rows = self._db.execute(f"SELECT {self._COLS} FROM artifacts ORDER BY created_at, id").fetchall()
        return [self._row(r) for r in rows]

    def find_by_hash(self, kind: str, content_hash: str) -> builtins.list[Artifact]:
        """Registered artifacts of ``kind`` with this content (oldest first): a directory that was
        registered once is recognised by its bytes, whatever name it was registered under."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLS} FROM artifacts WHERE kind=? AND content_hash=? ORDER BY created_at, id", (kind, content_hash)
            ).fetchall()
        return [self._row(r) for r in rows]

    def recognise(self, kind: str, ref: str | Path) -> Artifact | None:
        """The registered artifact ``ref`` names: an id (or unique prefix), or a file/directory whose
        content is registered (the copy in the store, or the directory it was registered from).
        Among several with that content, the one with the longest history (most parents) wins."""
        p = Path(ref)
        if p.exists():
            found = self.find_by_hash(kind, hash_path(p))
            return max(found, key=lambda a: (len(a.parents), -a.created_at)) if found else None
        art = self.resolve(str(ref))
        if art.kind != kind:
            raise RegistryError(f"{art.id} is a {art.kind}, not a {kind}")
        return art

    def parents(self, art_id: str) -> builtins.list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT parent FROM links WHERE child=? ORDER BY parent", (art_id,))]

    def children(self, art_id: str) -> builtins.list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT child FROM links WHERE parent=? ORDER BY child", (art_id,))]

    def lineage(self, art_id: str) -> Lineage:
        """The ancestor and descendant graph of one artifact (cycles are cut, shared nodes repeat)."""
        root = self.resolve(art_id)
        edges: set[tuple[str, str]] = set()

        def grow(node_id: str, step: Any, up: bool, seen: frozenset[str]) -> list[LineageNode]:
            out = []
            for nxt in step(node_id):
                edges.add((nxt, node_id) if up else (node_id, nxt))
                if nxt in seen:
                    continue
                art = self.get(nxt)
                if art is None:
                    continue
                out.append(LineageNode(art, grow(nxt, step, up, seen | {nxt})))
            return out

        ancestors = grow(root.id, self.parents, True, frozenset({root.id}))
        descendants = grow(root.id, self.children, False, frozenset({root.id}))
        return Lineage(root=root, ancestors=ancestors, descendants=descendants, edges=sorted(edges))
