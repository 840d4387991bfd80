"""The built-in corpus: English fortunes and Chinese classical poems/sayings that ship with the package.

The files in data/corpus/ are built by scripts/build_corpus.py from the Debian packages `fortunes`,
`fortunes-min` and `fortunes-zh` (licences in data/corpus/NOTICE). Each line of
{train,validation}.jsonl.gz is a document: {"text", "source", "lang": "zh"|"en"} and, for poems,
"title", "author" and "dynasty" (the poem's text still starts with its title and author lines).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

from scratchlm.data.jsonl import iter_text_records

CORPUS_DIR = Path(__file__).parent / "corpus"
SPLITS = ("train", "validation")


def corpus_path(split: str) -> Path:
    """Path of the compressed jsonl file of one split ("train" or "validation")."""
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; choose one of: {', '.join(SPLITS)}")
    path = CORPUS_DIR / f"{split}.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; rebuild it with `python scripts/build_corpus.py`")
    return path


def iter_corpus(split: str = "train", lang: str | None = None) -> Iterator[dict]:
    """Yield the documents of a split as dicts (optionally only one language, "zh" or "en")."""
    if lang not in (None, "zh", "en"):
        raise ValueError(f"unknown corpus lang {lang!r}; choose zh or en (or None for both)")
    path = corpus_path(split)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for doc in iter_text_records(f, path):
            if lang is None or doc.get("lang") == lang:
                yield doc


def corpus_texts(split: str = "train") -> list[str]:
    """All document texts of a split, in file order."""
    return [doc["text"] for doc in iter_corpus(split)]


def poems(split: str = "train") -> list[dict]:
    """The poems of a split (documents with a title and an author), in file order."""
    return [doc for doc in iter_corpus(split, lang="zh") if "author" in doc and "title" in doc]


# CJK ideographs (basic, extension A, B+), CJK punctuation (，。《》…) and full-width forms.
CJK_RE = re.compile("[\u4e00-\u9fff\u3400-\u4dbf\u3000-\u303f\uff00-\uffef\U00020000-\U0002ffff]")


def count_cjk(text: str) -> int:
    """Number of Chinese characters (ideographs, CJK punctuation, full-width forms) in a text."""
    return len(CJK_RE.findall(text))


def corpus_stats(split: str) -> dict:
    """Counts of a split: documents and characters overall and per lang, poems, CJK character share."""
    stats = {"docs": 0, "chars": 0, "poems": 0, "cjk_chars": 0, "by_lang": {}}
    for doc in iter_corpus(split):
        text, lang = doc["text"], doc.get("lang", "?")
        per = stats["by_lang"].setdefault(lang, {"docs": 0, "chars": 0})
        per["docs"] += 1
        per["chars"] += len(text)
        stats["docs"] += 1
        stats["chars"] += len(text)
        stats["poems"] += "author" in doc
        stats["cjk_chars"] += count_cjk(text)
    return stats
