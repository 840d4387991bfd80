#!/usr/bin/env python3
"""Rebuild scratchlm's built-in corpus from the Debian fortune packages.

    apt-get install -y fortunes fortunes-min fortunes-zh
    python scripts/build_corpus.py            # writes src/scratchlm/data/corpus/

Reads the English fortune files (packages `fortunes`, `fortunes-min`; never the offensive `off/` dir)
and the Chinese `tang300`, `song100` (poems) and `chinese` (sayings, Debian docs) from
/usr/share/games/fortunes; strips ANSI colour codes and overstrike; splits records on lines that are
just `%`; normalises whitespace; keeps a poem's title and author as fields (the text keeps its title
and author lines so that pretraining sees them); drops exact duplicates; holds out ~5% for validation
by a stable hash of the text; writes train.jsonl.gz, validation.jsonl.gz and NOTICE.

The same inputs always give byte-identical output: records are ordered by the hash of their text
(a fixed pseudo-shuffle, so any prefix mixes sources and languages) and gzip gets mtime=0 and no
file name. Standard library only, so the script runs without the package installed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

FORTUNE_DIR = Path("/usr/share/games/fortunes")
DOC_DIR = Path("/usr/share/doc")
OUT_DIR = Path(__file__).resolve().parent.parent / "src" / "scratchlm" / "data" / "corpus"

# The files each package installs (dpkg -L). Listed rather than globbed so that another fortune
# package installed on the machine (or a future off/ dir) never changes the corpus.
EN_FILES = {
    "fortunes": [
        "art", "ascii-art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs",
        "education", "ethnic", "food", "goedel", "humorists", "kids", "knghtbrd", "law", "linux",
        "linuxcookie", "love", "magic", "medicine", "men-women", "miscellaneous", "news", "paradoxum",
        "people", "perl", "pets", "platitudes", "politics", "pratchett", "science", "songs-poems",
        "sports", "startrek", "tao", "translate-me", "wisdom", "work", "zippy",
    ],
    "fortunes-min": ["fortunes", "literature", "riddles"],
}
ZH_FILES = {"fortunes-zh": ["tang300", "song100", "chinese"]}
POEM_DYNASTY = {"tang300": "唐", "song100": "宋"}  # poem files → dynasty of their poets
PACKAGES = ["fortunes", "fortunes-min", "fortunes-zh"]

VAL_PER_10K = 500  # ~5% validation

ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
OVERSTRIKE_RE = re.compile(r"[^\n]\x08")  # "_\bX" (underline) or "X\bX" (bold) → "X"
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all C0/C1 controls but \t and \n
TITLE_RE = re.compile(r"^(?:题目\s*[:：]\s*)?(《([^》]+)》.*)$")
AUTHOR_RE = re.compile(r"^作者\s*[:：]\s*([^（(]+?)\s*(?:[（(].*[)）])?\s*$")


def split_records(raw: str) -> list[str]:
    """Split a fortune file into records on lines that are exactly `%`."""
    records, cur = [], []
    for line in raw.split("\n"):
        if line.rstrip("\r") == "%":
            records.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    records.append("\n".join(cur))
    return records


def clean_text(text: str) -> str:
    """Strip colour codes and control characters; normalise whitespace; keep line structure."""
    text = ANSI_RE.sub("", text)
    while "\x08" in text:  # overstrike can stack ("_\b_\bX"); each pass removes one layer
        new = OVERSTRIKE_RE.sub("", text)
        if new == text:
            break
        text = new
    text = text.replace("\r\n", "\n").replace("\xa0", " ")
    text = CONTROL_RE.sub("", text)
    text = unicodedata.normalize("NFC", text)
    # Tabs mostly indent attributions ("\t\t-- Mark Twain"); 4 columns keeps the look, costs fewer tokens.
    lines = [line.expandtabs(4).rstrip() for line in text.split("\n")]
    text = textwrap.dedent("\n".join(lines))
    text = re.sub(r"\n{3,}", "\n\n", text)  # at most one blank line between paragraphs
    return text.strip("\n")


def parse_poem(text: str, source: str) -> dict | None:
    """Turn a cleaned poem record into {text, title, author, dynasty}; None if it is not a poem."""
    lines = [line.strip() for line in text.split("\n")]
    if len(lines) < 3:
        return None
    m_title, m_author = TITLE_RE.match(lines[0]), AUTHOR_RE.match(lines[1])
    if not (m_title and m_author):
        return None
    title_line, title = m_title.group(1).strip(), m_title.group(2).strip()
    author = m_author.group(1).strip()
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines[2:])).strip("\n")
    # One header layout for both collections (song100 writes "题目:" and lifespans in full-width digits).
    text = f"{title_line}\n作者：{author}\n{body}"
    return {"text": text, "title": title, "author": author, "dynasty": POEM_DYNASTY[source]}


def read_records(src_dir: Path, only: set[str] | None = None) -> list[dict]:
    """Read, clean and parse every record of every corpus file, in a fixed order."""
    jobs = [(name, "en") for files in EN_FILES.values() for name in files]
    jobs += [(name, "zh") for files in ZH_FILES.values() for name in files]
    if only is not None:
        jobs = [(n, lang) for n, lang in jobs if n in only]
    out = []
    for name, lang in jobs:
        path = src_dir / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; install the packages: apt-get install -y {' '.join(PACKAGES)}"
            )
        raw = path.read_bytes()
        try:
            raw_text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise ValueError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
        for rec in split_records(raw_text):
            text = clean_text(rec)
            if not text.strip():
                continue
            doc = {"text": text, "source": name, "lang": lang}
            if name in POEM_DYNASTY:
                poem = parse_poem(text, name)
                if poem is not None:
                    doc.update(poem)
            out.append(doc)
    return out


def text_hash(text: str) -> bytes:
    """Stable content hash (the split and the order depend only on the text)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def is_validation(text: str) -> bool:
    """True for the ~5% of documents held out for validation, chosen by a stable hash of the text."""
    return int.from_bytes(text_hash(text)[:8], "big") % 10_000 < VAL_PER_10K


def dedup(docs: list[dict]) -> tuple[list[dict], int]:
    """Drop exact duplicates of the text (the first occurrence wins); return (kept, n_dropped)."""
    seen, kept = set(), []
    for doc in docs:
        if doc["text"] in seen:
            continue
        seen.add(doc["text"])
        kept.append(doc)
    return kept, len(docs) - len(kept)


def write_jsonl_gz(path: Path, docs: list[dict]) -> None:
    """Write gzip jsonl with a fixed header (mtime 0, no file name) so rebuilds are byte-identical."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        for doc in docs:
            gz.write((json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
    tmp.replace(path)


def package_version(pkg: str) -> str:
    """The installed Debian version of a package, or 'unknown' without dpkg."""
    try:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else "unknown"


def build_notice(doc_dir: Path) -> str:
    """The licence notice: what the corpus is made of, then each package's Debian copyright file."""
    parts = [
        "scratchlm built-in corpus — licence notice\n",
        "The files train.jsonl.gz and validation.jsonl.gz in this folder are derived (colour codes",
        "stripped, whitespace normalised, duplicates dropped, split by hash) by scripts/build_corpus.py",
        "from these Debian packages, installed under /usr/share/games/fortunes:\n",
    ]
    for pkg in PACKAGES:
        files = (EN_FILES | ZH_FILES)[pkg]
        parts.append(f"  {pkg} {package_version(pkg)}: {', '.join(files)}")
    parts.append("\nTheir copyright and licence terms follow, verbatim from /usr/share/doc/<package>/copyright.\n")
    for pkg in PACKAGES:
        path = doc_dir / pkg / "copyright"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; install the package: apt-get install -y {pkg}")
        parts.append("=" * 78)
        parts.append(f"Package: {pkg}")
        parts.append("=" * 78)
        parts.append(path.read_text(encoding="utf-8").rstrip("\n") + "\n")
    return "\n".join(parts) + "\n"


def build(src_dir: Path, out_dir: Path, doc_dir: Path = DOC_DIR, only: set[str] | None = None) -> dict:
    """Build the corpus into out_dir; return counts per split."""
    docs, n_dups = dedup(read_records(src_dir, only))
    docs.sort(key=lambda d: text_hash(d["text"]))
    splits = {"train": [], "validation": []}
    for doc in docs:
        splits["validation" if is_validation(doc["text"]) else "train"].append(doc)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        write_jsonl_gz(out_dir / f"{split}.jsonl.gz", rows)
    (out_dir / "NOTICE").write_text(build_notice(doc_dir), encoding="utf-8")
    stats = {split: {"docs": len(rows), "chars": sum(len(d["text"]) for d in rows)} for split, rows in splits.items()}
    stats["exact_duplicates_dropped"] = n_dups
    stats["poems"] = sum("author" in d for d in docs)
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command line: build the corpus and print its counts."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=FORTUNE_DIR, help="fortune files folder (default %(default)s)")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: the package's corpus/)")
    p.add_argument("--doc-dir", type=Path, default=DOC_DIR, help="where <package>/copyright live")
    p.add_argument("--only", default=None, help="comma-separated file names to read (for tests)")
    args = p.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    try:
        stats = build(args.src, args.out, args.doc_dir, only)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(stats, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
