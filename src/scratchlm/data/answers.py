"""Checking a model's completion against a task's canonical answer (exact after normalising, digit credit)."""

from __future__ import annotations

import re
import unicodedata

ARITH_RE = re.compile(r"^(add|sub|mul|arith)(\d+)$")  # arithmetic task names: <op><digits>
_SPECIAL_RE = re.compile(r"<\|[^|>]*\|>")
_THINK_RE = re.compile(r"^.*</think>", re.S)
_NUM_RE = re.compile(r"-?\d+")
_CITATION_RE = re.compile(r"\[[^\[\]\s]+#\d+\]")  # a [source#chunk] key after a grounded answer
GROUNDED_TASKS = ("grounded_author", "grounded_next", "grounded_title")  # data/grounded.py
# Wrappers a correct short answer may come in ("作者是李白。", "The author is Li Bai.").
_AUTHOR_PREFIXES = ("这首诗的作者是", "作者是", "是", "theauthoris", "itwaswrittenby", "writtenby", "answer")
_AUTHOR_SUFFIXES = ("写的", "所作", "作")
_TITLE_PREFIXES = ("这句诗出自", "出自", "itisfrom", "itsfrom", "thepoemis", "from")


def _strip_completion(text: str) -> str:
    """Drop special tokens and a leading reasoning trace: only the final answer is checked."""
    return _THINK_RE.sub("", _SPECIAL_RE.sub("", text)).strip()


def normalize(text: str) -> str:
    """Compare form: NFKC, lower case, without whitespace, punctuation and symbols."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if not (ch.isspace() or unicodedata.category(ch)[0] in "PS"))


def _number(text: str) -> int | None:
    """The number a completion answers with: the first number after the last '=' (or in the text)."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,234 → 1234
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    m = _NUM_RE.search(text)
    return int(m.group()) if m else None


def can_check(task: str) -> bool:
    """Whether `check_answer` knows how to grade `task` (arithmetic, identity, next_line, author, grounded_*)."""
    return task in ("identity", "next_line", "author", *GROUNDED_TASKS) or bool(ARITH_RE.match(task))


def digit_credit(task: str, completion: str, answer: str) -> float:
    """Partial credit for an arithmetic answer: the share of its digits that are right, aligned from the units
    (a wrong length counts against it: 960 for 990 → 2/3, 91 for 913 → 0/3, 1019 for 929 → 1/4); 1.0 exactly
    when `check_answer` is right, 0.0 for a missing number, a wrong sign, or a task that is not arithmetic."""
    if not ARITH_RE.match(task):
        return 0.0
    got = _number(_strip_completion(completion))
    want = int(answer)
    if got is None or (got < 0) != (want < 0):
        return 0.0
    a, b = str(abs(got))[::-1], str(abs(want))[::-1]
    return sum(x == y for x, y in zip(a, b)) / max(len(a), len(b))


def check_answer(task: str, completion: str, answer: str) -> bool:
    """True when a completion answers correctly (whitespace/punctuation-insensitive; see module doc)."""
    completion = _strip_completion(completion)
    if task in GROUNDED_TASKS:  # the answer read from a passage, its citation key ignored
        completion = _CITATION_RE.sub("", completion)
        if task == "grounded_title":
            got = normalize(completion)
            for prefix in _TITLE_PREFIXES:
                got = got.removeprefix(prefix)
            return got != "" and got == normalize(answer)
        task = "author" if task == "grounded_author" else "next_line"
    if ARITH_RE.match(task):
        got = _number(completion)
        return got is not None and got == int(answer)
    if task == "identity":
        return normalize(answer) != "" and normalize(answer) in normalize(completion)
    if task == "next_line":
        return normalize(completion) == normalize(answer)
    if task == "author":
        got = normalize(completion)
        for prefix in _AUTHOR_PREFIXES:
            got = got.removeprefix(prefix)
        for suffix in _AUTHOR_SUFFIXES:
            got = got.removesuffix(suffix)
        return got == normalize(answer)
    raise ValueError(f"unknown synthetic task {task!r}; choose next_line, author, identity, "
                     f"{', '.join(GROUNDED_TASKS)} or <add|sub|mul|arith><digits>")


ANSWER_KINDS = ("number", "text")  # extract_answer's kinds beyond the task names: any numeric answer, any text


def extract_answer(task: str, completion: str) -> str | None:
    """The answer a completion gives, in the form `check_answer` compares (so that equal answers grade alike), or
    None when it gives none: the number for arithmetic (and kind "number"), the normalised text with the task's
    wrappers removed otherwise (kind "text": the whole normalised reply). Self-consistency votes on it."""
    text = _strip_completion(completion)
    if task == "number" or ARITH_RE.match(task):
        got = _number(text)
        return None if got is None else str(got)
    if task in GROUNDED_TASKS:
        text = _CITATION_RE.sub("", text)
        task = {"grounded_author": "author", "grounded_next": "next_line"}.get(task, task)
    got = normalize(text)
    if task == "author":
        for prefix in _AUTHOR_PREFIXES:
            got = got.removeprefix(prefix)
        for suffix in _AUTHOR_SUFFIXES:
            got = got.removesuffix(suffix)
    elif task == "grounded_title":
        for prefix in _TITLE_PREFIXES:
            got = got.removeprefix(prefix)
    elif task not in ("text", "identity", "next_line"):
        raise ValueError(f"extract_answer: unknown task {task!r}; choose {', '.join(ANSWER_KINDS)}, next_line, "
                         f"author, identity, {', '.join(GROUNDED_TASKS)} or <add|sub|mul|arith><digits>")
    return got or None
