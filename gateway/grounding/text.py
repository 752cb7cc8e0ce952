"""Documents to chunks: read .txt/.md/.html, split on sentences, overlap.

Chunks are runs of whole sentences up to ``max_chars`` (MiniLM sees at most
256 word pieces, about 1,000 characters of English, so 800 keeps the tail of a
chunk in view). Consecutive chunks share ``overlap`` sentences, so an answer
straddling a boundary is still whole in one of them. Spans are character
offsets into the document's extracted text, recorded in the manifest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

DOC_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm")
# sentence ends: . ! ? and the Japanese/Chinese 。！？ (closing quotes and brackets stay with them)
_SENT_RE = re.compile(r"[^.!?。！？\n]+(?:[.!?。！？]+[\"')\]」』）]*|\n|$)")
_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "head"}
_BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article", "pre", "blockquote", "title"}


@dataclass(frozen=True, slots=True)
class Document:
    doc_id: str  # path relative to the docs root, posix, with extension
    title: str
    text: str
    path: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Chunk:
    chunk_id: str  # "<doc_id>#<n>"
    doc_id: str
    title: str
    text: str
    start: int
    end: int


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.h1: list[str] = []
        self._skip = 0
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS and tag != "head":
            self._skip += 1
        self._in.append(tag)
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and tag != "head" and self._skip:
            self._skip -= 1
        if tag in self._in:
            while self._in and self._in.pop() != tag:
                pass
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if "title" in self._in:
            self.title.append(data)
            return
        if self._skip:
            return
        if "h1" in self._in:
            self.h1.append(data)
        self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str | None]:
    """Visible text of an HTML page (scripts and styles dropped) and its title."""
    p = _TextExtractor()
    p.feed(html)
    p.close()
    text = "".join(p.parts)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = re.sub(r"\s*\n\s*", "\n", text).strip()
    title = " ".join("".join(p.title).split()) or " ".join("".join(p.h1).split()) or None
    return text, title


def read_document(path: Path, root: Path) -> Document:
    raw = path.read_text(encoding="utf-8", errors="replace")
    doc_id = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    title: str | None = None
    if path.suffix.lower() in (".html", ".htm"):
        text, title = html_to_text(raw)
    else:
        text = raw.replace("\r\n", "\n").strip()
        if path.suffix.lower() in (".md", ".markdown"):
            m = re.search(r"^#\s+(.+)$", text, re.M)
            title = m.group(1).strip() if m else None
    if not title:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        title = first[:80] if first and len(first) <= 80 else path.stem.replace("_", " ").replace("-", " ")
    return Document(doc_id=doc_id, title=title, text=text, path=str(path))


def iter_documents(paths: Iterable[str | Path]) -> list[Document]:
    """Documents under the given files/directories, sorted by doc id (stable ids and hashes)."""
    docs: dict[str, Document] = {}
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in DOC_SUFFIXES)
            root = p
        elif p.is_file():
            files, root = [p], p.parent
        else:
            raise FileNotFoundError(f"no such file or directory: {p}")
        for f in files:
            d = read_document(f, root)
            if d.text:
                docs[d.doc_id] = d
    return [docs[k] for k in sorted(docs)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _SENT_RE.finditer(text):
        s, e = m.start(), m.end()
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            spans.append((s, e))
    return spans


def chunk_document(doc: Document, max_chars: int = 800, overlap: int = 1) -> list[Chunk]:
    """Greedy sentence packing; each chunk after the first repeats the last ``overlap`` sentences."""
    sents = sentence_spans(doc.text)
    # a sentence longer than max_chars is cut at word boundaries so nothing is lost
    split: list[tuple[int, int]] = []
    for s, e in sents:
        while e - s > max_chars:
            cut = doc.text.rfind(" ", s, s + max_chars)
            cut = cut if cut > s else s + max_chars
            split.append((s, cut))
            s = cut
            while s < e and doc.text[s].isspace():
                s += 1
        if e > s:
            split.append((s, e))
    chunks: list[Chunk] = []
    i = 0
    while i < len(split):
        j = i
        while j < len(split) and (j == i or split[j][1] - split[i][0] <= max_chars):
            j += 1
        start, end = split[i][0], split[j - 1][1]
        n = len(chunks)
        chunks.append(Chunk(f"{doc.doc_id}#{n}", doc.doc_id, doc.title, doc.text[start:end], start, end))
        if j >= len(split):
            break
        i = max(j - overlap, i + 1)
    return chunks
