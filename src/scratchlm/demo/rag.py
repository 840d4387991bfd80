"""The demo's RAG step: a slice of the built-in corpus indexed, one English and one Chinese question answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.demo.common import say
from scratchlm.demo.settings import DemoSettings


def run_rag_stage(out: Path, s: DemoSettings, paths: dict[str, Path], sft_scores: dict[str, tuple[int, int]],
                  progress: bool) -> dict[str, Any]:
    """Index a slice of the built-in corpus (s.rag_embedder fused with BM25), ask the SFT model one English and
    one Chinese held-out question with the retrieved chunks: the retrieved sources, whether the right document
    was among them, and the answer (with its citations) next to the answer without retrieval."""
    from scratchlm.engine.offline import LLM
    from scratchlm.rag.answer import answer_question
    from scratchlm.rag.embedders import get_embedder
    from scratchlm.rag.evalset import answer_contains, doc_of, write_eval_set
    from scratchlm.rag.index import index_paths
    from scratchlm.rag.retrieve import Retriever
    from scratchlm.rag.store import VectorStore
    from scratchlm.runs import load_run

    corpus, questions = write_eval_set(out / "rag", n_per_kind=5, n_docs_per_lang=s.rag_docs, seed=s.seed)
    emb = get_embedder(s.rag_embedder)
    say(f"RAG: indexing {corpus} with {emb.name} → {out / 'rag' / 'demo.db'}")
    model, tokenizer, _ = load_run(out / "sft")
    engine = LLM(model, tokenizer)
    asked = []
    with VectorStore(out / "rag" / "demo.db", emb.name, emb.dim, "cosine") as store:
        index_paths(store, emb, [corpus], show_progress=progress)  # a rerun finds the file unchanged and skips it
        n_chunks = store.count()
        retriever = Retriever(store, emb)
        for lang in ("en", "zh"):
            q = next(q for q in questions if q.lang == lang)
            hits = retriever.search(q.question, k=3, mode="hybrid")
            with_rag = answer_question(engine, q.question, hits, max_new_tokens=s.max_new_tokens)
            without = answer_question(engine, q.question, [], max_new_tokens=s.max_new_tokens)
            asked.append({"question": q.question, "expected": q.answer, "sources": with_rag.sources,
                          "right_doc_retrieved": any(doc_of(h.source) in q.relevant for h in hits),
                          "answer": with_rag.text, "cited": with_rag.cited, "correct": answer_contains(with_rag.text, q.answer),
                          "answer_without_rag": without.text})
    return {"embedder": emb.name, "chunks": n_chunks, "questions": asked}
