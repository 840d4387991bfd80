"""The agent's built-in tools: a calculator (agent/calculator.py, never `eval`), the current date, a file reader
confined to one folder, and search over a `scratchlm rag index` database."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Callable

from scratchlm.agent.calculator import calculate
from scratchlm.agent.tools import Tool, function_tool

BUILTIN = ("calculator", "date", "files", "rag")
MAX_FILE_CHARS = 1500  # what one read returns (within one observation); the model asks again with an offset


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and parentheses.

    Args:
        expression: The arithmetic to compute, e.g. "1234 * 5678".
    """
    return calculate(expression)


def date_tool(now: Callable[[], dt.datetime] = dt.datetime.now) -> Tool:
    """The `date` tool; `now` is the clock (a test passes a fixed one)."""

    def date() -> str:
        """Today's date (ISO 8601) and weekday, in the local time zone."""
        d = now()
        return f"{d.date().isoformat()} ({d.strftime('%A')})"

    return function_tool(date)


class FileAccessError(ValueError):
    """A path that leaves the folder, or that is not a readable file in it."""


def resolve_inside(root: str | Path, path: str) -> Path:
    """The file `path` names inside `root`: relative, no `..`, and after following links still under `root`
    (a symlink that points out is refused like `..`)."""
    root = Path(root).resolve(strict=True)
    if not isinstance(path, str) or not path.strip():
        raise FileAccessError("give a file path relative to the folder")
    if "\x00" in path:
        raise FileAccessError("the path holds a NUL character")
    p = Path(path)
    if p.is_absolute() or path.startswith(("~", "\\")) or (len(path) > 1 and path[1] == ":"):
        raise FileAccessError(f"{path!r} is absolute; give a path relative to the folder")
    if ".." in p.parts:
        raise FileAccessError(f"{path!r} goes up with '..'; only files inside the folder can be read")
    try:
        target = (root / p).resolve(strict=True)
    except FileNotFoundError:
        raise FileAccessError(f"{path!r}: no such file in the folder") from None
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise FileAccessError(f"{path!r} cannot be resolved: {e}") from None
    if not target.is_relative_to(root):
        raise FileAccessError(f"{path!r} leads outside the folder (through a symbolic link)")
    if not target.is_file():
        raise FileAccessError(f"{path!r} is not a file")
    return target


def files_tool(root: str | Path) -> tuple[Tool, Tool]:
    """The `read_file` and `list_files` tools over the files under `root` (nothing outside it can be read)."""
    root = Path(root).resolve(strict=True)
    if not root.is_dir():
        raise NotADirectoryError(f"--files-root {root}: not a folder")

    def read_file(path: str, offset: int = 0) -> str:
        """Read a text file from the agent's folder.

        Args:
            path: The file's path relative to the folder, e.g. "notes/todo.txt".
            offset: The character to start at, for files longer than one read.
        """
        target = resolve_inside(root, path)
        # O_NOFOLLOW: a link swapped in after the check is not followed
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
            text = f.read(max(0, offset) + MAX_FILE_CHARS + 1)[max(0, offset):]
        more = len(text) > MAX_FILE_CHARS
        return text[:MAX_FILE_CHARS] + (f"\n[more: read again with offset={offset + MAX_FILE_CHARS}]" if more else "")

    def list_files() -> str:
        """List the files in the agent's folder (relative paths, at most 200)."""
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        return "\n".join(names[:200]) or "(the folder is empty)"

    return function_tool(read_file), function_tool(list_files)


def rag_tool(db: str | Path, k: int = 3, mode: str = "hybrid") -> Tool:
    """The `search` tool over a `scratchlm rag index` database (the embedder that built it, dense + BM25)."""
    from scratchlm.rag.embedders import embedder_spec, get_embedder
    from scratchlm.rag.retrieve import Retriever
    from scratchlm.rag.store import VectorStore

    db = Path(db)
    if not db.exists():
        raise FileNotFoundError(f"--rag-db {db}: no such rag database (build one with `scratchlm rag index DOCS "
                                f"--db {db}`)")
    store = VectorStore(db, create=False)
    embedder = None if mode == "bm25" else get_embedder(embedder_spec(store.embedder, db))
    retriever = Retriever(store, embedder)

    def search(query: str) -> str:
        """Search the document collection; returns the best passages with their source.

        Args:
            query: What to look for, in words.
        """
        hits = retriever.search(query, k=k, mode=mode)
        return "\n".join(f"[{h.ref}] {' '.join(h.text.split())[:600]}" for h in hits) or "(no matching passages)"

    return function_tool(search)


def builtin_tools(names: list[str], rag_db: str | Path | None = None, files_root: str | Path | None = None) -> list[Tool]:
    """The built-in tools named (calculator, date, files, rag); rag needs a database, files a folder."""
    tools: list[Tool] = []
    for name in names:
        if name == "calculator":
            tools.append(function_tool(calculator))
        elif name == "date":
            tools.append(date_tool())
        elif name == "files":
            if files_root is None:
                raise ValueError("the files tool needs --files-root DIR (the one folder it may read)")
            tools.extend(files_tool(files_root))
        elif name == "rag":
            if rag_db is None:
                raise ValueError("the rag tool needs --rag-db DB (built by `scratchlm rag index`)")
            tools.append(rag_tool(rag_db))
        else:
            raise ValueError(f"unknown tool {name!r}; the built-in tools are: {', '.join(BUILTIN)}")
    return tools
