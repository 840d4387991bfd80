"""Loading documents (.txt, .md, .jsonl) and cutting them into overlapping chunks.

A chunk is a span [start, end) of its document's text, cut at sentence ends where possible (English
. ! ? and Chinese 。！？；… as well as blank lines), never longer than `size` characters; consecutive
chunks overlap by up to `overlap` characters so that a fact split by a cut is still whole in one of
them. Every character of the document is in at least one chunk (tests check this).
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SUFFIXES = (".txt", ".md", ".jsonl")

# A sentence ends after . ! ? (followed by whitespace or a closing quote), after a Chinese full stop,
# question or exclamation mark, semicolon or ellipsis (no space follows those), or at a line break.
# The end offset is taken after the trailing whitespace so the next chunk starts on a word.
_SENTENCE_END = re.compile(r"(?:[.!?][\"'”’)\]]*(?=\s)|[。！？；…]+[”’」』)）]*|\n)\s*")


@dataclass(frozen=True)
class Document:
    """One text to index: `source` is how answers cite it (a path, or path:line for a jsonl record)."""

    source: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class Chunk:
    """A span of a document: `index` is its number within the document ([source#index] in citations)."""

    source: str
    index: int
    start: int
    end: int
    text: str

    @property
    def ref(self) -> str:
        """The citation key, `source#index`."""
        return f"{self.source}#{self.index}"

    @property
    def hash(self) -> str:
        """sha256 of the chunk text (first 16 hex digits): identical text → identical hash."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]


def sentence_ends(text: str) -> list[int]:
    """Offsets just after each sentence end (and its trailing whitespace), ascending, ending at len(text)."""
    ends = sorted({m.end() for m in _SENTENCE_END.finditer(text) if 0 < m.end() < len(text)})
    return ends + [len(text)] if text else []


def chunk_spans(text: str, size: int = 400, overlap: int = 80) -> list[tuple[int, int]]:
    """[start, end) spans covering `text`, each at most `size` chars, cut at sentence ends where possible."""
    if size < 1:
        raise ValueError(f"chunk size={size} must be >= 1")
    if not 0 <= overlap < size:
        raise ValueError(f"chunk overlap={overlap} must be >= 0 and smaller than size={size}")
    bounds = sentence_ends(text)
    spans: list[tuple[int, int]] = []
    start, n = 0, len(text)
    while start < n:
        # the last sentence end within reach, else a hard cut at `size` characters
        i = bisect.bisect_right(bounds, start + size) - 1
        at_sentence = i >= 0 and bounds[i] > start
        end = bounds[i] if at_sentence else min(start + size, n)
        spans.append((start, end))
        if end >= n:
            break
        # Next start: the earliest sentence end inside the overlap window, so the overlap is whole
        # sentences. A cut at a sentence end with no such window starts afresh there; a hard cut backs
        # off `overlap` characters. Always strictly forward, so the loop ends.
        lo = max(end - overlap, start + 1)
        j = bisect.bisect_left(bounds, lo)
        if j < len(bounds) and bounds[j] < end:
            start = bounds[j]
        else:
            start = end if at_sentence else lo
    return spans


def chunk_document(doc: Document, size: int = 400, overlap: int = 80) -> list[Chunk]:
    """The chunks of a document; whitespace-only spans are dropped (nothing to retrieve there)."""
    chunks = []
    for start, end in chunk_spans(doc.text, size, overlap):
        piece = doc.text[start:end]
        if piece.strip():
            chunks.append(Chunk(doc.source, len(chunks), start, end, piece))
    return chunks


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def load_documents(path: str | Path, source: str | None = None) -> list[Document]:
    """The documents of one file: a .txt/.md file is one document, a .jsonl file one per line ("text")."""
    from scratchlm.data.jsonl import iter_jsonl
    from scratchlm.tokenizer.bpe import lone_surrogate

    path = Path(path)
    source = source or path.name
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; rag indexes {', '.join(SUFFIXES)}")
    text = _read_text(path)
    if path.suffix != ".jsonl":
        return [Document(source, text)]
    docs = []
    for lineno, rec in iter_jsonl(text.splitlines(), path):
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise ValueError(f"{path}:{lineno}: expected an object with a string 'text' field")
        for field in ("text", "title"):  # JSON may spell a lone surrogate ("\\ud800"); UTF-8 cannot
            bad = lone_surrogate(str(rec.get(field, "")))
            if bad:
                raise ValueError(f"{path}:{lineno}: '{field}' is not valid Unicode (a lone surrogate "
                                 f"U+{ord(bad[1]):04X} at character {bad[0]})")
        docs.append(Document(f"{source}:{lineno}", rec["text"], str(rec.get("title", ""))))
    return docs


def find_files(paths: list[str | Path]) -> Iterator[tuple[Path, str]]:
    """(file, source name) for every indexable file under the given files and folders, sorted.

    The source name is the path relative to the folder given (the file name for a file given directly),
    so citations stay short and do not depend on where the folder lives.
    """
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix in SUFFIXES:
                    yield f, f.relative_to(p).as_posix()
        elif p.is_file():
            if p.suffix not in SUFFIXES:
                raise ValueError(f"{p}: unsupported file type {p.suffix!r}; rag indexes {', '.join(SUFFIXES)}")
            yield p, p.name
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
