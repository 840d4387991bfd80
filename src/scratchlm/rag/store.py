"""The vector database: one SQLite file with the sqlite-vec extension.

Why sqlean-py: Python's bundled `sqlite3` here is built without `enable_load_extension`, so it cannot
load sqlite-vec. sqlean-py is a drop-in `sqlite3` module (same DB-API) with its own recent SQLite
compiled with extension loading, shipped as wheels — no system library to match. (apsw can load
extensions too but has its own API; pysqlite3-binary has no wheels for every platform.)

Tables:
    meta(key, value)                          schema version, embedder name, dim, metric
    files(id, path, source, sha, n_chunks)    one row per indexed file; sha covers bytes + chunking
    chunks(id, file_id, idx, source, start, end, text, hash)
    vec_chunks  vec0(chunk_id, embedding float[dim] distance_metric=<metric>)
    vec_chunks_<m>  the same vectors again for each extra metric asked for at creation (`--metric cosine l1`)

A search by a metric that has a vec0 table runs vec0's KNN query; any other metric scans the vectors
with sqlite-vec's vec_distance_<m> (exact too, but each row goes through an SQL function call: about
15x slower than vec0 at 100k chunks, see bench/bench_rag.py). An extra table costs the vectors' size again.

The file is in WAL mode, so `scratchlm rag index` can write while `scratchlm serve --rag-db` reads: readers see
the last committed state, never a half-written file. Each file is written in one transaction (delete its old chunks and vectors, insert the new ones,
update its row), so a kill at any moment leaves every file either fully old or fully new.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from scratchlm.rag.chunking import Chunk
from scratchlm.rag.similarity import check_metric

SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk: its row id, citation key, text and the distance or fused rank that found it."""

    chunk_id: int
    source: str
    index: int
    text: str
    score: float

    @property
    def ref(self) -> str:
        """The citation key, `source#index`."""
        return f"{self.source}#{self.index}"


def _connect(path: Path, timeout: float):
    try:
        import sqlean
        import sqlite_vec
    except ImportError:
        raise ValueError("rag needs sqlean-py and sqlite-vec: pip install -e '.[rag]'") from None
    db = sqlean.connect(str(path), timeout=timeout, isolation_level=None)  # explicit BEGIN/COMMIT below
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    db.enable_load_extension(False)  # nothing else may be loaded through this connection
    return db, sqlean


class VectorStore:
    """A rag database file: open (or create) it, add files' chunks, search by vector."""

    def __init__(self, path: str | Path, embedder_name: str | None = None, dim: int | None = None,
                 metric: str | Sequence[str] | None = None, create: bool = True, timeout: float = 5.0):
        """Open `path`; a new file is created for (embedder_name, dim, metric(s)) when `create` is set.

        An existing file must have been built by `embedder_name` (when given) with the same dim.
        """
        self.path = Path(path)
        existed = self.path.exists()
        if not existed and not create:
            raise FileNotFoundError(f"{self.path}: no such rag database (build one with `scratchlm rag index`)")
        self.db, self._sqlean = _connect(self.path, timeout)
        try:
            self.meta = self._read_or_init_meta(embedder_name, dim, metric)
            # WAL: readers (the server) read the last committed state while a writer (the indexer) writes, instead
            # of waiting for its lock. The mode is stored in the file: set once, every later connection has it.
            self.db.execute("PRAGMA journal_mode=WAL")
        except BaseException as e:
            self.db.close()
            if not existed and self.path.exists() and self.path.stat().st_size == 0:
                self.path.unlink()  # do not leave an empty file behind that a later open would call corrupt
            if isinstance(e, self._sqlean.DatabaseError):
                raise self._explain(e) from None
            raise
        self.dim = int(self.meta["dim"])
        self.metric = self.meta["metric"]
        extra = [m for m in self.meta.get("extra_metrics", "").split(",") if m]
        self.metrics = [self.metric] + extra  # the metrics with a vec0 table (KNN), first = vec_chunks
        self.embedder = self.meta["embedder"]

    # -- opening -------------------------------------------------------------------------------
    def _explain(self, e: Exception) -> ValueError:
        """A DatabaseError → a ValueError that names the file and says what to do."""
        msg = str(e)
        if "locked" in msg or "busy" in msg:
            return ValueError(f"{self.path}: database is locked (another `scratchlm rag index` writing to it?); "
                              f"wait for it to finish or remove the other process")
        if "not a database" in msg or "malformed" in msg or "corrupt" in msg:
            return ValueError(f"{self.path}: not a valid rag database ({msg}); the file is corrupt or not SQLite — "
                              f"delete it and index again")
        return ValueError(f"{self.path}: {msg}")

    def _read_or_init_meta(self, embedder_name: str | None, dim: int | None,
                           metric: str | Sequence[str] | None) -> dict[str, str]:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            if tables:
                raise ValueError(f"{self.path}: an SQLite file but not a rag database (tables: {', '.join(sorted(tables))})")
            if embedder_name is None or dim is None:
                raise ValueError(f"{self.path}: empty database; build it with `scratchlm rag index`")
            metrics = [metric or "cosine"] if metric is None or isinstance(metric, str) else list(metric)
            metrics = list(dict.fromkeys(check_metric(m) for m in metrics))  # de-duplicated, order kept
            self._create(embedder_name, int(dim), metrics)
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = sorted({"schema", "embedder", "dim", "metric"} - set(meta)) + sorted({"files", "chunks", "vec_chunks"} - tables)
        if missing:
            raise ValueError(f"{self.path}: rag database is missing {', '.join(missing)}; delete it and index again")
        if meta["schema"] != SCHEMA_VERSION:
            raise ValueError(f"{self.path}: rag database schema {meta['schema']}, this scratchlm reads {SCHEMA_VERSION}")
        if embedder_name is not None and (meta["embedder"] != embedder_name or (dim is not None and int(meta["dim"]) != dim)):
            raise ValueError(
                f"{self.path}: built with embedder {meta['embedder']!r} (dim {meta['dim']}), not {embedder_name!r} "
                f"(dim {dim}); vectors of different models cannot be compared — use --embedder matching the "
                f"database or index into a new file")
        return meta

    def _create(self, embedder_name: str, dim: int, metrics: list[str]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.execute("CREATE TABLE files(id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, source TEXT NOT NULL, "
                            "sha TEXT NOT NULL, n_chunks INTEGER NOT NULL, indexed_at REAL NOT NULL)")
            self.db.execute("CREATE TABLE chunks(id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL REFERENCES files(id), "
                            "idx INTEGER NOT NULL, source TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL, "
                            "text TEXT NOT NULL, hash TEXT NOT NULL)")
            self.db.execute("CREATE INDEX chunks_file ON chunks(file_id)")
            for i, metric in enumerate(metrics):
                self.db.execute(f"CREATE VIRTUAL TABLE {self._table(metric, metrics[0])} USING vec0(chunk_id INTEGER "
                                f"PRIMARY KEY, embedding float[{dim}] distance_metric={metric})")
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema", SCHEMA_VERSION), ("embedder", embedder_name), ("dim", str(dim)), ("metric", metrics[0]),
                ("extra_metrics", ",".join(metrics[1:])),
                ("created", time.strftime("%Y-%m-%dT%H:%M:%S"))])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _table(self, metric: str, primary: str | None = None) -> str:
        """The vec0 table holding the vectors under `metric`'s distance."""
        return "vec_chunks" if metric == (primary or self.metric) else f"vec_chunks_{metric}"

    def _tables(self) -> list[str]:
        return [self._table(m) for m in self.metrics]

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def __enter__(self) -> "VectorStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------
    def file_sha(self, path: str | Path) -> str | None:
        """The recorded sha of an indexed file (None when it is not indexed)."""
        row = self.db.execute("SELECT sha FROM files WHERE path = ?", (str(Path(path).resolve()),)).fetchone()
        return row[0] if row else None

    def replace_file(self, path: str | Path, source: str, sha: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Atomically replace everything stored for `path` with these chunks and their vectors."""
        vectors = np.asarray(vectors, dtype="<f4")
        if vectors.shape != (len(chunks), self.dim):
            raise ValueError(f"{path}: {len(chunks)} chunks but vectors of shape {vectors.shape}; expected "
                             f"({len(chunks)}, {self.dim})")
        key = str(Path(path).resolve())
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except self._sqlean.DatabaseError as e:
            raise self._explain(e) from None
        try:
            self._delete_file(key)
            cur = db.execute("INSERT INTO files(path, source, sha, n_chunks, indexed_at) VALUES (?, ?, ?, ?, ?)",
                             (key, source, sha, len(chunks), time.time()))
            file_id = cur.lastrowid
            for c, v in zip(chunks, vectors):
                cid = db.execute("INSERT INTO chunks(file_id, idx, source, start, end, text, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (file_id, c.index, c.source, c.start, c.end, c.text, c.hash)).lastrowid
                for t in self._tables():
                    db.execute(f"INSERT INTO {t}(chunk_id, embedding) VALUES (?, ?)", (cid, v.tobytes()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _delete_file(self, key: str) -> None:
        row = self.db.execute("SELECT id FROM files WHERE path = ?", (key,)).fetchone()
        if row is None:
            return
        ids = [r[0] for r in self.db.execute("SELECT id FROM chunks WHERE file_id = ?", (row[0],))]
        for t in self._tables():
            self.db.executemany(f"DELETE FROM {t} WHERE chunk_id = ?", [(i,) for i in ids])
        self.db.execute("DELETE FROM chunks WHERE file_id = ?", (row[0],))
        self.db.execute("DELETE FROM files WHERE id = ?", (row[0],))

    def remove_file(self, path: str | Path) -> None:
        """Remove a file's chunks and vectors (in one transaction)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self._delete_file(str(Path(path).resolve()))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- reading -------------------------------------------------------------------------------
    def files(self) -> list[tuple[str, str, int]]:
        """(path, source, n_chunks) of every indexed file."""
        return [tuple(r) for r in self.db.execute("SELECT path, source, n_chunks FROM files ORDER BY id")]

    def count(self) -> int:
        """Number of stored chunks."""
        return int(self.db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def check(self) -> list[str]:
        """Consistency problems (empty when consistent): chunks without vectors, and the reverse."""
        problems = []
        n_chunks = self.count()
        for t in self._tables():
            n_vec = int(self.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
            if n_chunks != n_vec:
                problems.append(f"{n_chunks} chunks but {n_vec} vectors in {t}")
        declared = int(self.db.execute("SELECT coalesce(sum(n_chunks), 0) FROM files").fetchone()[0])
        if declared != n_chunks:
            problems.append(f"files declare {declared} chunks, {n_chunks} stored")
        orphans = self.db.execute("SELECT count(*) FROM chunks WHERE file_id NOT IN (SELECT id FROM files)").fetchone()[0]
        if orphans:
            problems.append(f"{orphans} chunks of no file")
        return problems

    def search(self, query: np.ndarray, k: int = 5, metric: str | None = None) -> list[tuple[int, float]]:
        """(chunk_id, distance) of the k nearest chunks, nearest first.

        A metric with a vec0 table uses vec0's KNN query (`MATCH ... AND k = ?`); another metric scans all
        vectors with sqlite-vec's `vec_distance_<metric>` functions — the same answer, slower.
        """
        metric = check_metric(metric or self.metric)
        q = np.asarray(query, dtype="<f4").reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"{self.path}: query vector has {q.shape[0]} dims, the database {self.dim}")
        if k < 1:
            raise ValueError(f"search: k={k} must be >= 1")
        try:
            if metric in self.metrics:
                rows = self.db.execute(f"SELECT chunk_id, distance FROM {self._table(metric)} WHERE embedding MATCH ? AND k = ? "
                                       "ORDER BY distance", (q.tobytes(), k)).fetchall()
                rows.sort(key=lambda r: (r[1], r[0]))  # vec0 allows one ORDER BY; ties by id, as the scan
            else:
                rows = self.db.execute(f"SELECT chunk_id, vec_distance_{metric}(embedding, ?) AS d FROM vec_chunks "
                                       f"ORDER BY d, chunk_id LIMIT ?", (q.tobytes(), k)).fetchall()
        except self._sqlean.DatabaseError as e:
            raise self._explain(e) from None
        return [(int(i), float(d)) for i, d in rows]

    def get_chunks(self, ids: Sequence[int]) -> dict[int, tuple[str, int, str]]:
        """{chunk_id: (source, index, text)} for the given ids."""
        out = {}
        for i in range(0, len(ids), 500):  # SQLite caps the number of ? in one statement
            part = list(ids[i:i + 500])
            q = f"SELECT id, source, idx, text FROM chunks WHERE id IN ({','.join('?' * len(part))})"
            for cid, source, idx, text in self.db.execute(q, part):
                out[int(cid)] = (source, int(idx), text)
        return out

    def all_texts(self) -> tuple[list[int], list[str]]:
        """(chunk ids, texts) of every chunk in id order (the BM25 index is built over these)."""
        rows = self.db.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
        return [int(r[0]) for r in rows], [r[1] for r in rows]
