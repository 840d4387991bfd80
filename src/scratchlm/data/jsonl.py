"""Reading JSON lines with errors that name the file and line (corpus, tokenizer input, metrics, prompts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator


def iter_jsonl(lines: Iterable[str], where: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; bad JSON raises ValueError naming where:line."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}:{lineno}: invalid JSON ({e.msg})") from None


def iter_text_records(lines: Iterable[str], where: str | Path) -> Iterator[dict]:
    """The objects of a JSON-lines text file, each required to have a string "text" field."""
    for lineno, rec in iter_jsonl(lines, where):
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise ValueError(f"{where}:{lineno}: expected an object with a string 'text' field")
        yield rec


def iter_prompt_records(lines: Iterable[str], where: str | Path) -> Iterator[tuple[int, list[dict], dict]]:
    """(line number, chat messages, the record's other columns) of a prompts file: "prompt" is a string (one
    user turn) or a list of chat messages; anything else raises naming where:line."""
    for lineno, rec in iter_jsonl(lines, where):
        p = rec.get("prompt") if isinstance(rec, dict) else None
        if isinstance(p, str):
            p = [{"role": "user", "content": p}]
        if not isinstance(p, list) or not p:
            raise ValueError(f"{where}:{lineno}: field 'prompt' must be a string or a list of chat messages")
        yield lineno, p, {k: v for k, v in rec.items() if k != "prompt"}
