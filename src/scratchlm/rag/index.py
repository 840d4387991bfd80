"""Incremental indexing: files → chunks → vectors → the store, one transaction per file.

A file is skipped when its sha (bytes + chunking settings) matches what the store recorded, and
replaced whole when it changed, so re-indexing a folder costs only the changed files and never leaves
a stale chunk. The vectors of a file are computed before its transaction starts: a kill while
embedding loses nothing, a kill while writing rolls that one file back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from scratchlm.rag.chunking import chunk_document, find_files, load_documents
from scratchlm.rag.embedders import Embedder
from scratchlm.rag.store import VectorStore


@dataclass
class IndexReport:
    """What one `index_paths` call did."""

    indexed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0


def file_sha(path: Path, size: int, overlap: int) -> str:
    """sha256 of the file's bytes and the chunking settings (other settings → other chunks → re-index)."""
    h = hashlib.sha256(path.read_bytes())
    h.update(f"|chunk={size},{overlap}".encode())
    return h.hexdigest()


def index_paths(store: VectorStore, embedder: Embedder, paths: Sequence[str | Path], size: int = 400,
                overlap: int = 80, batch: int = 64, show_progress: bool = True) -> IndexReport:
    """Index every .txt/.md/.jsonl file under `paths` into `store`; unchanged files are skipped."""
    import time

    import numpy as np

    from scratchlm.progress import progress

    if embedder.name != store.embedder or embedder.dim != store.dim:
        raise ValueError(f"{store.path}: built with embedder {store.embedder!r} (dim {store.dim}), not "
                         f"{embedder.name!r} (dim {embedder.dim}); index into a new file or use the same embedder")
    t0 = time.perf_counter()
    report = IndexReport()
    files = list(find_files(list(paths)))
    # A file indexed earlier from one of these folders and gone from it now is removed, so a deleted
    # document stops being retrieved (files indexed from other folders are left alone).
    present = {str(p.resolve()) for p, _ in files}
    folders = [Path(p).resolve() for p in paths if Path(p).is_dir()]
    for stored, source, _ in store.files():
        if stored not in present and any(Path(stored).is_relative_to(d) for d in folders):
            store.remove_file(stored)
            report.removed.append(source)
    todo = []
    for path, source in files:
        sha = file_sha(path, size, overlap)
        if store.file_sha(path) == sha:
            report.skipped.append(source)
        else:
            todo.append((path, source, sha))
    # chunking is cheap: do it up front so progress counts chunks (one big .jsonl is one file)
    plan = [(path, source, sha, [c for doc in load_documents(path, source) for c in chunk_document(doc, size, overlap)])
            for path, source, sha in todo]
    total = sum(len(chunks) for *_, chunks in plan)
    bar = progress(total, desc="index", unit="chunk", enabled=show_progress and bool(plan))
    for path, source, sha, chunks in plan:
        texts = [c.text for c in chunks]
        vecs = []
        for i in range(0, len(texts), batch):
            vecs.append(embedder.embed_passages(texts[i:i + batch]))
            bar.update(len(vecs[-1]))
        vectors = np.concatenate(vecs) if vecs else np.zeros((0, store.dim), dtype=np.float32)
        store.replace_file(path, source, sha, chunks, vectors)
        report.indexed.append(source)
        report.chunks += len(chunks)
    bar.close()
    report.seconds = time.perf_counter() - t0
    return report
