"""The rag vector store at 10k and 100k chunks: index throughput, query latency p50/p99, and sqlite-vec's
search time as a ratio to the exact numpy reference (scratchlm.rag.similarity) on the same vectors.

Vectors are random (normal, 384 dims like MiniLM / e5; the maths does not care what made them), so
the 100k scale needs no hours of embedding. Index throughput here is the store alone (chunks and
vectors written, one transaction per "file" of 1,000 chunks); the embedders' own throughput on real
corpus text is printed separately, since on a CPU the embedder is what indexing waits for.
sqlite-vec answers through vec0's KNN query (a vec0 table per metric) or by scanning every row with
vec_distance_<metric> (a metric without its own table); both are exact, and the bench checks that both
return the reference's top-k.

    python bench/bench_rag.py [--sizes 10000 100000] [--queries 30] [--dim 384] [--embedders e5 minilm]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from scratchlm.rag.chunking import Chunk
from scratchlm.rag.similarity import top_k
from scratchlm.rag.store import VectorStore


def build(path: Path, V: np.ndarray, metrics: list[str], per_file: int = 1000) -> float:
    """Write V into a fresh store (one vec0 table per metric) in files of `per_file` chunks → chunks/s."""
    store = VectorStore(path, "random", V.shape[1], metrics)
    t0 = time.perf_counter()
    for f in range(0, len(V), per_file):
        part = V[f:f + per_file]
        chunks = [Chunk(f"f{f}.txt", i, 0, 1, f"chunk {f + i}") for i in range(len(part))]
        store.replace_file(path.parent / f"f{f}.txt", f"f{f}.txt", "sha", chunks, part)
    dt = time.perf_counter() - t0
    store.close()
    return len(V) / dt


def latencies(fn, queries: np.ndarray) -> np.ndarray:
    """Seconds per call of fn(q) for each query."""
    out = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t0)
    return np.array(out)


def scan(store: VectorStore, q: np.ndarray, k: int, metric: str) -> list:
    """The scan path: every vector through sqlite-vec's vec_distance_<metric> (no vec0 KNN)."""
    sql = f"SELECT chunk_id, vec_distance_{metric}(embedding, ?) AS d FROM vec_chunks ORDER BY d LIMIT ?"
    return store.db.execute(sql, (q.astype("<f4").tobytes(), k)).fetchall()


def bench_size(n: int, dim: int, n_queries: int, k: int, tmp: Path) -> dict:
    """Index and query `n` random vectors; print the table and return its numbers."""
    rng = np.random.default_rng(n)
    V = rng.normal(size=(n, dim)).astype(np.float32)
    Q = rng.normal(size=(n_queries, dim)).astype(np.float32)
    V64 = V.astype(np.float64)  # the reference's working precision, converted once outside the timing
    rate1 = build(tmp / f"one{n}.db", V, ["cosine"])
    rate3 = build(tmp / f"b{n}.db", V, ["cosine", "l2", "l1"])
    size_mb = (tmp / f"b{n}.db").stat().st_size / 2**20
    print(f"\n{n:,} chunks x {dim} dims: index {rate1:,.0f} chunks/s with one vec0 table, {rate3:,.0f} with three "
          f"(store only); db {size_mb:.0f} MB with three")
    print(f"  {'k=' + str(k):<8}{'vec0 KNN p50 ms':>17}{'p99 ms':>9}{'scan p50 ms':>13}{'numpy p50 ms':>14}"
          f"{'KNN/numpy':>11}{'scan/numpy':>12}  same top-k")
    out: dict = {"index_chunks_per_s": {"one_table": rate1, "three_tables": rate3}, "db_mb": size_mb, "metrics": {}}
    with VectorStore(tmp / f"b{n}.db", create=False) as store:
        ids = np.array([r[0] for r in store.db.execute("SELECT id FROM chunks ORDER BY id")])
        for metric in ("cosine", "l2", "l1"):
            knn = latencies(lambda q: store.search(q, k, metric), Q)
            sc = latencies(lambda q: scan(store, q, k, metric), Q[: max(3, n_queries // 3)])
            ref = latencies(lambda q: top_k(V64, q, k, metric), Q)
            same = all([i for i, _ in store.search(q, k, metric)] == ids[top_k(V64, q, k, metric)[0]].tolist()
                       == [r[0] for r in scan(store, q, k, metric)] for q in Q[:5])
            p50, p99 = np.percentile(knn, 50) * 1e3, np.percentile(knn, 99) * 1e3
            s50, r50 = np.percentile(sc, 50) * 1e3, np.percentile(ref, 50) * 1e3
            print(f"  {metric:<8}{p50:>17.1f}{p99:>9.1f}{s50:>13.1f}{r50:>14.1f}{p50 / r50:>10.2f}x{s50 / r50:>11.2f}x  {same}")
            out["metrics"][metric] = {"knn_p50_ms": p50, "knn_p99_ms": p99, "scan_p50_ms": s50, "numpy_p50_ms": r50,
                                      "knn_over_numpy": p50 / r50, "scan_over_numpy": s50 / r50, "same_top_k": same}
    return out


def bench_embedders(specs: list[str], n_texts: int) -> dict[str, float]:
    """Chunks per second of each embedder on corpus text."""
    from scratchlm.data.corpus import iter_corpus
    from scratchlm.rag.chunking import Document, chunk_document
    from scratchlm.rag.embedders import get_embedder

    docs = list(iter_corpus("validation"))[:n_texts]
    texts = [c.text for d in docs for c in chunk_document(Document("v", d["text"]))]
    print(f"\nembedders on {len(texts)} chunks of the corpus' validation split (mixed EN/ZH):")
    rates = {}
    for spec in specs:
        emb = get_embedder(spec)
        emb.embed_passages(texts[:4])  # warm up (first-call allocations, thread pools)
        t0 = time.perf_counter()
        emb.embed_passages(texts)
        dt = time.perf_counter() - t0
        print(f"  {emb.name:<28}{len(texts) / dt:>8.1f} chunks/s")
        rates[emb.name] = len(texts) / dt
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--embedders", nargs="*", default=["e5", "minilm"], help="also time these on corpus text")
    ap.add_argument("--embed-texts", type=int, default=200, help="documents for the embedder timing")
    ap.add_argument("--results", type=Path, help="also write the numbers to this JSON file (scratchlm.results)")
    args = ap.parse_args()
    numbers: dict = {"dim": args.dim, "queries": args.queries, "k": args.k, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            numbers["sizes"][str(n)] = bench_size(n, args.dim, args.queries, args.k, Path(tmp))
    if args.embedders:
        numbers["embedder_chunks_per_s"] = bench_embedders(args.embedders, args.embed_texts)
    if args.results:
        from scratchlm.results import write_results

        write_results(args.results, "bench_rag", numbers, seed=None,
                      notes="random normal vectors (the maths does not care what made them); query ratios are "
                            "measured in one process, absolute ms depend on the machine's load")


if __name__ == "__main__":
    main()
