"""`scratchlm rag index | search | ask | eval`: the command front. It imports nothing heavy at import
time (every `scratchlm` call registers it); the work lives in the other rag modules."""

from __future__ import annotations

import argparse
import sys


def _open(args: argparse.Namespace, create: bool):
    """(store, embedder): the embedder named by --embedder, else the one recorded in the database."""
    from pathlib import Path

    from scratchlm.rag.embedders import embedder_spec, get_embedder
    from scratchlm.rag.store import VectorStore

    if create:
        embedder = get_embedder(args.embedder or "e5")
        store = VectorStore(args.db, embedder.name, embedder.dim, args.metric, create=True)
        missing = [m for m in args.metric or [] if m not in store.metrics]
        if missing:
            store.close()
            raise ValueError(f"{args.db}: has vec0 tables for {', '.join(store.metrics)}, not {', '.join(missing)} "
                             f"(metrics are fixed when a database is created; index into a new file)")
        return store, embedder
    if not Path(args.db).exists():
        raise FileNotFoundError(f"{args.db}: no such rag database (build one with `scratchlm rag index DOCS --db {args.db}`)")
    store = VectorStore(args.db, create=False)
    spec = args.embedder or embedder_spec(store.embedder, args.db)
    embedder = None if getattr(args, "mode", "") == "bm25" else get_embedder(spec)
    if embedder is not None and (embedder.name != store.embedder or embedder.dim != store.dim):
        store.close()
        raise ValueError(f"{args.db}: built with embedder {store.embedder!r} (dim {store.dim}), not {embedder.name!r} "
                         f"(dim {embedder.dim}); drop --embedder or pass the one that built it")
    return store, embedder


def _cmd_index(args: argparse.Namespace) -> int:
    from scratchlm.rag.index import index_paths

    store, embedder = _open(args, create=True)
    with store:
        rep = index_paths(store, embedder, args.docs, size=args.chunk_size, overlap=args.overlap,
                          show_progress=not args.quiet)
        total = store.count()
    rate = rep.chunks / rep.seconds if rep.seconds > 0 else 0.0
    print(f"{args.db}: indexed {len(rep.indexed)} files ({rep.chunks} chunks, {rate:.0f} chunks/s), "
          f"skipped {len(rep.skipped)} unchanged, removed {len(rep.removed)} gone; {total} chunks in the database ({embedder.name}, {'/'.join(store.metrics)})")
    return 0


def _print_hits(hits, width: int = 160) -> None:
    for rank, h in enumerate(hits, 1):
        text = " ".join(h.text.split())
        print(f"{rank:2d}. [{h.ref}] {h.score:.4f}  {text[:width]}{'…' if len(text) > width else ''}")


def _cmd_search(args: argparse.Namespace) -> int:
    from scratchlm.engine.cli import check_text_arg
    from scratchlm.rag.retrieve import Retriever

    check_text_arg(args.query, "query")
    store, embedder = _open(args, create=False)
    with store:
        hits = Retriever(store, embedder).search(args.query, k=args.k, metric=args.metric, mode=args.mode)
    if not hits:
        print("(no matching chunks)")
    _print_hits(hits)
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    from scratchlm.engine.cli import check_text_arg
    from scratchlm.engine.offline import LLM
    from scratchlm.rag.answer import answer_question
    from scratchlm.rag.retrieve import Retriever

    check_text_arg(args.question, "question")  # before the embedder and the model load
    store, embedder = _open(args, create=False)
    with store:
        hits = Retriever(store, embedder).search(args.question, k=args.k, metric=args.metric, mode=args.mode)
    llm = LLM.from_run(args.run, args.device)
    if llm.tokenizer is None:
        raise ValueError(f"{args.run}: no tokenizer.json in the run folder")
    ans = answer_question(llm, args.question, hits, max_new_tokens=args.max_new_tokens)
    if args.show_context:
        print(ans.prompt, end="\n\n", file=sys.stderr)
    print(ans.with_citations())
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from scratchlm.rag.evalset import run_eval

    numbers = run_eval(args.embedders, args.workdir, n_per_kind=args.n, n_docs_per_lang=args.docs_per_lang,
                       run=args.run, k=args.k, seed=args.seed, ask_per_kind=args.ask_per_kind)
    if args.results:
        from scratchlm.results import write_results

        path = write_results(args.results, "rag_eval", numbers, seed=args.seed, split="test",
                             notes="questions built from corpus documents by rag/evalset.py; no retrieval setting "
                                   "was chosen on them")
        print(f"results: {path}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `scratchlm rag` and its subcommands."""
    p = subparsers.add_parser("rag", help="retrieval-augmented answers over your own documents (sqlite-vec + BM25)")
    sub = p.add_subparsers(dest="rag_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    def common(q: argparse.ArgumentParser, search: bool) -> None:
        q.add_argument("--db", required=True, help="the database file (one SQLite file)")
        q.add_argument("--embedder", default=None,
                       help="hash | minilm | e5 | run:PATH (index default: e5; search/ask: the one that built --db)")
        if search:
            q.add_argument("--metric", default=None, choices=["cosine", "l2", "l1"],
                           help="distance (default: the database's first); one without a vec0 table is a scan")
            q.add_argument("--k", type=int, default=5, help="how many chunks to return")
            q.add_argument("--bm25", dest="mode", action="store_const", const="hybrid", default="dense",
                           help="fuse the vector ranking with BM25 by reciprocal rank")
            q.add_argument("--bm25-only", dest="mode", action="store_const", const="bm25", help="BM25 alone")

    q = sub.add_parser("index", help="index .txt/.md/.jsonl files or folders (incremental: unchanged files are skipped)")
    q.add_argument("docs", nargs="+", metavar="DOCS", help="files or folders")
    common(q, search=False)
    q.add_argument("--metric", nargs="+", default=None, choices=["cosine", "l2", "l1"],
                   help="distance(s) to build vec0 KNN tables for in a new database (default cosine; each extra "
                        "one stores the vectors again; other metrics are still searchable by a slower scan)")
    q.add_argument("--chunk-size", type=int, default=400, help="characters per chunk at most")
    q.add_argument("--overlap", type=int, default=80, help="characters two neighbouring chunks may share")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_index)

    q = sub.add_parser("search", help="top-k chunks for a query")
    q.add_argument("query")
    common(q, search=True)
    q.set_defaults(func=_cmd_search)

    q = sub.add_parser("ask", help="answer a question from retrieved chunks with a run, citing [source#chunk]")
    q.add_argument("run", metavar="RUN", help="run folder (config.toml, model.safetensors, tokenizer.json)")
    q.add_argument("question")
    common(q, search=True)
    q.add_argument("--max-new-tokens", type=int, default=64)
    q.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    q.add_argument("--show-context", action="store_true", help="print the prompt given to the model (stderr)")
    q.set_defaults(func=_cmd_ask, k=3)

    q = sub.add_parser("eval", help="recall@k on held-out questions built from the built-in corpus (EN and ZH apart)")
    q.add_argument("--embedders", nargs="+", default=["hash", "minilm", "e5"], help="hash minilm e5 run:PATH ...")
    q.add_argument("--workdir", default="runs/rag-eval", help="where the corpus file and one db per embedder go")
    q.add_argument("--n", type=int, default=50, help="questions per kind (4 kinds: 2 English, 2 Chinese)")
    q.add_argument("--docs-per-lang", type=int, default=1000, help="corpus size: relevant documents + distractors")
    q.add_argument("--ask-per-kind", type=int, default=25, help="questions per kind asked to --run (with and without RAG)")
    q.add_argument("--k", type=int, default=5)
    q.add_argument("--run", default=None, help="also measure answer accuracy of this run with RAG vs without")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--results", default=None, help="also write the numbers with their provenance (command, seed, "
                   "commit, machine, date) to this JSON file, e.g. docs/results/rag_eval.json")
    q.set_defaults(func=_cmd_eval)
