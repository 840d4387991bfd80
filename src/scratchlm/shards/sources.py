"""Input files for `scratchlm prepare`: resolve names, stream raw records, validate them per kind.

Formats:
- .jsonl / .jsonl.gz: one JSON object per line (blank lines are skipped), every kind; the fields per
  kind are in DESIGN.md ("text"; "conversations"; "chosen"+"rejected"; "prompt"+"answer").
- .txt / .txt.gz (pretrain): one document per paragraph, paragraphs separated by blank lines. Line
  breaks inside a paragraph stay (poems and fortunes are multi-line). The "line" of a document is
  the line its paragraph starts on.
- .parquet (pretrain): the "text" column, streamed by row group; the "line" is the 1-based row.
- "builtin": the built-in corpus' train split (a .jsonl.gz that ships with the package).
Malformed records raise `DataError("file:line: what is wrong")`.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

KINDS = ("pretrain", "sft", "preference", "prompt")
BUILTIN = "builtin"


class DataError(ValueError):
    """A malformed input record; the message starts with `file:line:`."""


@dataclass(frozen=True)
class Source:
    """One input: its name in reports, where it lives, and how to read it."""

    name: str
    path: Path
    format: str  # "jsonl" | "txt" | "parquet"
    gzipped: bool

    @property
    def size_bytes(self) -> int:
        """Bytes on disk (compressed size for .gz)."""
        return self.path.stat().st_size


def resolve_source(spec: str | Path) -> Source:
    """A Source for a path (.jsonl, .txt, optionally .gz; .parquet) or the word "builtin"."""
    if str(spec) == BUILTIN:
        from scratchlm.data.corpus import corpus_path

        return Source(BUILTIN, corpus_path("train"), "jsonl", True)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    name = path.name
    gzipped = name.endswith(".gz")
    base = name[: -len(".gz")] if gzipped else name
    for fmt in ("jsonl", "txt", "parquet"):
        if base.endswith("." + fmt):
            if fmt == "parquet" and gzipped:
                break
            return Source(str(spec), path, fmt, gzipped)
    raise DataError(f"{path}: unsupported input type; use .jsonl, .txt (optionally .gz) or .parquet")


def _open_binary(src: Source) -> BinaryIO:
    """The file as bytes, decompressed on the fly for .gz."""
    return gzip.open(src.path, "rb") if src.gzipped else open(src.path, "rb")


def iter_raw(src: Source) -> Iterator[tuple[int, Any, int]]:
    """Yield (line, payload, n_bytes): payload is the raw JSON line (bytes) or a document str."""
    if src.format == "parquet":
        yield from _iter_parquet(src)
        return
    with _open_binary(src) as f:
        if src.format == "jsonl":
            for lineno, raw in enumerate(f, 1):
                if raw.strip():
                    yield lineno, raw, len(raw)
            return
        # txt: paragraphs separated by blank lines.
        para: list[bytes] = []
        start = 0
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                if not para:
                    start = lineno
                para.append(raw)
            elif para:
                yield start, _decode(src, start, b"".join(para)), sum(map(len, para))
                para = []
        if para:
            yield start, _decode(src, start, b"".join(para)), sum(map(len, para))


def _decode(src: Source, line: int, raw: bytes) -> str | DataError:
    """UTF-8 text of a paragraph, or the error to report for it (raised later, --skip-bad aware)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return DataError(f"{src.path}:{line}: not valid UTF-8 (byte {e.start} of the paragraph)")


def _iter_parquet(src: Source) -> Iterator[tuple[int, Any, int]]:
    """Rows of the "text" column, one row group at a time (memory stays at one group)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is in the [dev]/[parquet] extras
        raise DataError(f"{src.path}: reading .parquet needs pyarrow (pip install 'scratchlm[parquet]')") from e
    pf = pq.ParquetFile(src.path)
    names = pf.schema_arrow.names
    if "text" not in names:
        raise DataError(f"{src.path}: parquet file has no 'text' column (columns: {', '.join(names)})")
    row = 0
    for g in range(pf.num_row_groups):
        for value in pf.read_row_group(g, columns=["text"]).column("text").to_pylist():
            row += 1
            if not isinstance(value, str):
                err = DataError(f"{src.path}:{row}: 'text' must be a string, got {_type(value)}")
                yield row, err, 0
            else:
                yield row, value, len(value.encode("utf-8"))


def _type(v: Any) -> str:
    """JSON-ish type name for error messages."""
    return "null" if v is None else type(v).__name__


def parse_record(kind: str, src: Source, line: int, payload: Any) -> Any:
    """Validate one record for `kind`; returns a text (pretrain), chat (sft), pair dict or prompt dict."""
    where = f"{src.path}:{line}"
    if isinstance(payload, DataError):
        raise payload
    if isinstance(payload, str):  # .txt / .parquet: already a document
        return payload
    try:
        rec = json.loads(payload)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        msg = e.msg if isinstance(e, json.JSONDecodeError) else "not valid UTF-8"
        raise DataError(f"{where}: bad JSON ({msg})") from None
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {_type(rec)}")
    if kind == "pretrain":
        return _field(rec, "text", str, where)
    if kind == "sft":
        chat = _messages(_field(rec, "conversations", list, where), where, "conversations")
        if rec.get("tools") is None:
            return chat
        # a chat with tool schemas: rendered into its system turn by encode_chat(tools=...)
        tools = _field(rec, "tools", list, where)
        if not all(isinstance(t, dict) for t in tools):
            raise DataError(f"{where}: 'tools' must be a list of JSON schemas (objects)")
        return {"messages": chat, "tools": tools}
    if kind == "preference":
        chosen = _messages(_field(rec, "chosen", list, where), where, "chosen")
        rejected = _messages(_field(rec, "rejected", list, where), where, "rejected")
        return {"chosen": chosen, "rejected": rejected}
    if kind == "prompt":
        prompt = _messages(_field(rec, "prompt", list, where), where, "prompt")
        answer = _field(rec, "answer", (str, int, float), where)
        # Other scalar columns (task, lang, ...) ride along: reward functions take them as **columns.
        columns = {k: v for k, v in rec.items() if k not in ("prompt", "answer")}
        return {"prompt": prompt, "answer": str(answer), "columns": columns}
    raise ValueError(f"unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")


def _field(rec: dict, name: str, types: type | tuple, where: str) -> Any:
    """rec[name] checked against `types`, or a DataError naming the field."""
    if name not in rec:
        raise DataError(f"{where}: missing {name!r} (keys: {', '.join(map(repr, rec)) or 'none'})")
    v = rec[name]
    if not isinstance(v, types) or isinstance(v, bool):
        want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise DataError(f"{where}: {name!r} must be {want}, got {_type(v)}")
    return v


# What a message keeps through prepare: what the chat template renders or masks by (weight 0: a context turn).
MESSAGE_KEYS = ("role", "content", "weight", "tool_calls")


def _messages(msgs: list, where: str, field: str) -> list[dict]:
    """A validated chat (roles and contents checked by the tokenizer's rules), MESSAGE_KEYS only."""
    from scratchlm.tokenizer.bpe import validate_messages

    if not msgs:
        raise DataError(f"{where}: {field!r} is an empty list")
    try:
        validate_messages(msgs)
    except ValueError as e:
        raise DataError(f"{where}: {field}: {e}") from None
    return [{k: m[k] for k in MESSAGE_KEYS if k in m and (k != "content" or m[k] is not None)} for m in msgs]


def total_size(sources: list[Source]) -> int | None:
    """Bytes to read when every input is uncompressed text (progress-bar total), else None."""
    if any(s.gzipped or s.format == "parquet" for s in sources):
        return None
    return sum(os.path.getsize(s.path) for s in sources)
