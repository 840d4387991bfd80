"""Grounded answers, measured: held-out grounded questions (data/grounded.py) answered three ways through the one
RAG answering path (`rag.answer.answer_question`, what `scratchlm rag ask` runs):

- closed-book: the bare question, no passage;
- gold: the question with only the gold passage (the poem the answer is in);
- retrieval: the question with the top-k chunks that the real retriever (hybrid dense + BM25 by default) finds in an index of
  the built-in corpus built by `rag.index.index_paths` (the Chinese documents of the corpus train split and a
  sample of the English ones, written as one .jsonl as the demo's RAG step does).

Scores are `check_answer` on the answer, reported overall, per language of the question's phrasing and per task;
the retrieval column also says how often the gold poem was among the retrieved chunks."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from scratchlm.data.answers import GROUNDED_TASKS, check_answer

MODES = ("closed_book", "gold", "retrieval")


def grounded_items(side: str = "val", n_per_task: int = 20, seed: int = 0, poems: list[dict] | None = None,
                   tasks: Sequence[str] = GROUNDED_TASKS) -> list:
    """n_per_task held-out `GroundedItem`s of each grounded task, alternating English and Chinese phrasings."""
    from scratchlm.data.grounded import Grounded

    if side == "train":
        raise ValueError("grounded_items: choose a held-out side (val or test)")
    if poems is None:
        from scratchlm.data.corpus import poems as corpus_poems

        poems = corpus_poems("train")
    out = []
    for name in tasks:
        task = Grounded(name, poems)
        rng = random.Random(f"scratchlm-grounded-eval:{seed}:{name}:{side}")
        out += [task.item(rng, side, ("en", "zh")[i % 2]) for i in range(n_per_task)]
    return out


def write_corpus(path: str | Path, n_en_docs: int = 1000, seed: int = 0) -> Path:
    """The retrieval corpus as one .jsonl: every Chinese document of the corpus train split (the poems asked about
    among thousands of poems and sayings) and `n_en_docs` English ones. Unchanged bytes are not rewritten, so an
    index built earlier is reused."""
    from scratchlm.data.corpus import iter_corpus

    docs = list(iter_corpus("train"))
    zh = [d for d in docs if d.get("lang") == "zh"]
    en = [d for d in docs if d.get("lang") == "en"]
    en = random.Random(seed).sample(en, min(n_en_docs, len(en)))
    text = "".join(json.dumps({"text": d["text"], **({"title": d["title"]} if "title" in d else {})},
                              ensure_ascii=False) + "\n" for d in zh + en)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def grounded_accuracy(llm: Any, items: list, workdir: str | Path, embedder: str = "e5", k: int = 3,
                      max_new_tokens: int = 48, n_en_docs: int = 1000, modes: Sequence[str] = MODES,
                      search_mode: str = "hybrid") -> dict:
    """Accuracy of `llm` (a `scratchlm.engine.LLM`) on `items` in each of `modes`, overall / per language / per task,
    plus the retrieval's gold-poem recall@k and a few samples. The index (`embedder`, searched by `search_mode` as
    `rag ask --mode` does; the demo's choice by default) is built once in `workdir`."""
    from scratchlm.rag.answer import answer_question
    from scratchlm.rag.store import Hit

    if not items:
        raise ValueError("grounded_accuracy: no items")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    scores: dict[str, dict[str, list[int]]] = {m: defaultdict(list) for m in modes}
    recall: dict[str, list[int]] = defaultdict(list)
    samples: list[dict] = []
    retriever, store, line_of = None, None, {}
    if "retrieval" in modes:
        from scratchlm.rag.embedders import get_embedder
        from scratchlm.rag.index import index_paths
        from scratchlm.rag.retrieve import Retriever
        from scratchlm.rag.store import VectorStore

        workdir = Path(workdir)
        corpus = write_corpus(workdir / "corpus.jsonl", n_en_docs)
        for n, line in enumerate(corpus.read_text(encoding="utf-8").splitlines(), 1):
            line_of.setdefault(json.loads(line)["text"], n)
        emb = get_embedder(embedder)
        store = VectorStore(workdir / f"grounded-{emb.name.replace('/', '_')}.db", emb.name, emb.dim, "cosine")
        index_paths(store, emb, [corpus], show_progress=False)
        retriever = Retriever(store, emb)
    try:
        for it in items:
            got: dict[str, str] = {}
            for mode in modes:
                if mode == "closed_book":
                    hits = []
                elif mode == "gold":
                    src, _, idx = it.gold[0].rpartition("#")
                    hits = [Hit(0, src, int(idx), it.gold[1], 0.0)]
                else:
                    hits = retriever.search(it.question, k=k, mode=search_mode)
                    ok = any(h.source.endswith(f":{line_of.get(it.gold[1], -1)}") for h in hits)
                    recall[it.lang].append(int(ok))
                    recall["all"].append(int(ok))
                ans = answer_question(llm, it.question, hits, max_new_tokens=max_new_tokens)
                got[mode] = ans.text
                right = int(check_answer(it.task, ans.text, it.answer))
                for key in ("all", it.lang, it.task):
                    scores[mode][key].append(right)
            if len(samples) < 6:
                samples.append({"task": it.task, "question": it.question, "expected": it.answer, **got})
    finally:
        if store is not None:
            store.close()
    out: dict = {"n": len(items), "k": k}
    if "retrieval" in modes:
        out.update(embedder=embedder, search_mode=search_mode)
    for mode, by in scores.items():
        out[mode] = {key: sum(v) / len(v) for key, v in sorted(by.items())}
    if recall:
        out["gold_retrieved"] = {key: sum(v) / len(v) for key, v in sorted(recall.items())}
    out["samples"] = samples
    return out
