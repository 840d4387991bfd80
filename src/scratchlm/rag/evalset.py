"""Held-out retrieval questions built from the built-in corpus, and the recall@k / answer measurement.

Four kinds of question, each answered by one document (plus exact duplicates of it, counted relevant):

    zh_author   《枫桥夜泊》这首诗的作者是谁？          → the poem (its title line names it, the question not its text)
    zh_next     “月落乌啼霜满天”的下一句是什么？        → the poem holding that clause
    en_who      Who said: "what's a cult? it just means..."?  → the fortune ending "-- Robert Altman"
    en_next     How does the saying "include me..." go on?    → the fortune that starts so

The questions quote at most one clause or the first words of a document, never the answer. The corpus to
search is every relevant document plus random distractors of the same language, written as one .jsonl
file; one database per embedder is built beside it (incrementally, so a rerun only searches).
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

ZH_CLAUSE = re.compile(r"[^，。？！；、\s]{4,9}")  # a verse clause between punctuation marks
EN_ATTRIB = re.compile(r"\n\s*--\s*([^,\n(]{3,40})")  # "\n\t-- Robert Altman" → Robert Altman


@dataclass
class Question:
    """One question: its kind and language, the expected answer string and the relevant doc numbers."""

    kind: str
    lang: str
    question: str
    answer: str
    relevant: list[int]


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _en_words(text: str) -> list[str]:
    return text.split()


def build_eval_set(n_per_kind: int = 50, n_docs_per_lang: int = 1000, seed: int = 0) -> tuple[list[dict], list[Question]]:
    """(documents, questions): documents are {"text", "title"?} dicts; `relevant` indexes into them."""
    from scratchlm.data.corpus import iter_corpus

    rng = random.Random(seed)
    docs = [d for split in ("train", "validation") for d in iter_corpus(split)]
    by_norm: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(docs):
        by_norm[_norm(d["text"])].append(i)

    # -- candidate questions per kind (doc index first) ------------------------------------------------
    cands: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    title_count = defaultdict(set)
    for d in docs:
        if "title" in d and "author" in d:
            title_count[d["title"]].add(d["author"])
    for i, d in enumerate(docs):
        text = d["text"]
        if d.get("lang") == "zh" and "author" in d and "title" in d:
            if len(title_count[d["title"]]) == 1 and d["title"] not in ("无题",):
                q = rng.choice(["《{t}》这首诗的作者是谁？", "谁写了《{t}》？", "《{t}》是哪位诗人的作品？"]).format(t=d["title"])
                cands["zh_author"].append((i, q, d["author"]))
            body = "\n".join(text.split("\n")[2:])
            clauses = ZH_CLAUSE.findall(body)
            pairs = [(a, b) for a, b in zip(clauses, clauses[1:]) if body.count(a) == 1]
            if pairs:
                a, b = rng.choice(pairs)
                q = rng.choice(["“{a}”的下一句是什么？", "“{a}”后面一句是什么？", "{a}，下一句是？"]).format(a=a)
                cands["zh_next"].append((i, q, b))
        elif d.get("lang") == "en" and d.get("source") not in ("ascii-art", "translate-me", "zippy"):
            m = EN_ATTRIB.search(text)
            body = text[: m.start()] if m else text
            words = _en_words(body)
            if m and 8 <= len(words) <= 60:
                name = m.group(1).strip().rstrip(".")
                quote = " ".join(words[:7]).strip("\"'").lower()
                q = rng.choice(['Who said: "{q}..."?', 'Whose words are these: "{q}..."?',
                                'Who is quoted saying "{q}..."?']).format(q=quote)
                cands["en_who"].append((i, q, name))
            elif not m and 12 <= len(words) <= 60:
                start, rest = " ".join(words[:6]), " ".join(words[6:9])
                q = rng.choice(['How does the saying that begins "{s}" go on?', 'Complete the quote: "{s}..."',
                                'What comes after "{s}" in the fortune?']).format(s=start.lower())
                cands["en_next"].append((i, q, rest))

    questions: list[tuple[str, int, str, str]] = []
    for kind in ("en_who", "en_next", "zh_author", "zh_next"):
        pool = cands[kind]
        rng.shuffle(pool)
        for i, q, a in pool[:n_per_kind]:
            questions.append((kind, i, q, a))

    # -- the corpus: relevant docs (and their duplicates) + random distractors per language -----------
    keep: set[int] = set()
    for _, i, _, _ in questions:
        keep.update(by_norm[_norm(docs[i]["text"])])
    for lang in ("en", "zh"):
        pool = [i for i, d in enumerate(docs) if d.get("lang") == lang and i not in keep]
        have = sum(docs[i].get("lang") == lang for i in keep)
        keep.update(rng.sample(pool, max(0, min(len(pool), n_docs_per_lang - have))))
    order = sorted(keep)
    new_index = {old: new for new, old in enumerate(order)}
    out_docs = [{"text": docs[i]["text"], **({"title": docs[i]["title"]} if "title" in docs[i] else {})} for i in order]
    out_q = [Question(kind, kind[:2], q, a, sorted(new_index[j] for j in by_norm[_norm(docs[i]["text"])]))
             for kind, i, q, a in questions]
    return out_docs, out_q


def write_eval_set(workdir: str | Path, n_per_kind: int = 50, n_docs_per_lang: int = 1000,
                   seed: int = 0) -> tuple[Path, list[Question]]:
    """Write corpus.jsonl (unchanged bytes if already there, so indexes are reused) → (path, questions)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    docs, questions = build_eval_set(n_per_kind, n_docs_per_lang, seed)
    path = workdir / "corpus.jsonl"
    text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    (workdir / "questions.jsonl").write_text(
        "".join(json.dumps(asdict(q), ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
    return path, questions


def doc_of(source: str) -> int:
    """The document number of a chunk source "corpus.jsonl:LINE" (line 1 = document 0)."""
    return int(source.rsplit(":", 1)[1]) - 1


def recall_at_k(retriever, questions: list[Question], k: int, mode: str, metric: str | None = None) -> dict[str, float]:
    """Share of questions with a relevant document among the top-k chunks, per kind and per language."""
    hits: dict[str, list[int]] = defaultdict(list)
    for q in questions:
        got = {doc_of(h.source) for h in retriever.search(q.question, k=k, metric=metric, mode=mode)}
        ok = int(bool(got & set(q.relevant)))
        hits[q.kind].append(ok)
        hits[q.lang].append(ok)
    return {key: sum(v) / len(v) for key, v in sorted(hits.items())}


def answer_contains(answer: str, expected: str) -> bool:
    """Whether the expected string occurs in the answer (case, spaces and NFKC width ignored)."""
    import unicodedata

    def norm(s: str) -> str:
        return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", s).lower()).strip()

    return norm(expected) in norm(answer)


def run_eval(embedders: list[str], workdir: str | Path, n_per_kind: int = 50, n_docs_per_lang: int = 1000,
             run: str | None = None, k: int = 5, seed: int = 0, ask_per_kind: int = 25) -> dict:
    """Index the eval corpus with each embedder, print recall@k (dense, +BM25, BM25 alone); optionally the
    answer accuracy of `run` with and without RAG (best embedder, hybrid). Returns and saves the numbers."""
    import time

    from scratchlm.rag.embedders import get_embedder
    from scratchlm.rag.index import index_paths
    from scratchlm.rag.retrieve import Retriever
    from scratchlm.rag.store import VectorStore

    workdir = Path(workdir)
    corpus, questions = write_eval_set(workdir, n_per_kind, n_docs_per_lang, seed)
    print(f"eval set: {len(questions)} questions, corpus {corpus} ({sum(1 for _ in open(corpus, encoding='utf-8'))} docs)")
    results: dict = {"questions": len(questions), "k": k, "recall": {}}
    cols = ["en", "zh", "en_who", "en_next", "zh_author", "zh_next"]
    print(f"{'recall@' + str(k):<34}" + "".join(f"{c:>10}" for c in cols))
    best = None
    for spec in embedders:
        emb = get_embedder(spec)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", emb.name)
        with VectorStore(workdir / f"{safe}.db", emb.name, emb.dim, "cosine") as store:
            rep = index_paths(store, emb, [corpus], show_progress=True)
            if rep.chunks:
                results.setdefault("index_chunks_per_s", {})[emb.name] = rep.chunks / rep.seconds
            r = Retriever(store, emb)
            modes = ["dense", "hybrid"] + (["bm25"] if spec == embedders[0] else [])
            for mode in modes:
                t0 = time.perf_counter()
                rec = recall_at_k(r, questions, k, mode)
                ms = (time.perf_counter() - t0) / len(questions) * 1000
                label = "BM25 alone" if mode == "bm25" else f"{emb.name}{' + BM25' if mode == 'hybrid' else ''}"
                results["recall"][label] = {**rec, "ms_per_query": ms}
                print(f"{label:<34}" + "".join(f"{rec.get(c, 0):>10.3f}" for c in cols) + f"   ({ms:.0f} ms/query)")
                if mode == "hybrid" and (best is None or rec["en"] + rec["zh"] > best[0]):
                    best = (rec["en"] + rec["zh"], spec)
    if run is not None and best is not None:
        results["answers"] = answer_accuracy(run, best[1], workdir, questions, ask_per_kind, seed)
    (workdir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return results


def answer_accuracy(run: str, spec: str, workdir: Path, questions: list[Question], per_kind: int, seed: int) -> dict:
    """Share of answers of `run` containing the expected string, with RAG (top-3 hybrid) and without."""
    from scratchlm.engine.offline import LLM
    from scratchlm.rag.answer import answer_question
    from scratchlm.rag.embedders import get_embedder
    from scratchlm.rag.retrieve import Retriever
    from scratchlm.rag.store import VectorStore

    engine = LLM.from_run(run, "cpu")
    emb = get_embedder(spec)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", emb.name)
    by_kind: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        by_kind[q.kind].append(q)
    out: dict = {}
    samples = []
    with VectorStore(workdir / f"{safe}.db", emb.name, emb.dim) as store:
        r = Retriever(store, emb)
        for kind, qs in by_kind.items():
            rag = plain = cited = 0
            for q in qs[:per_kind]:
                hits = r.search(q.question, k=3, mode="hybrid")
                a_rag = answer_question(engine, q.question, hits, max_new_tokens=48)
                a_plain = answer_question(engine, q.question, [], max_new_tokens=48)
                rag += answer_contains(a_rag.text, q.answer)
                plain += answer_contains(a_plain.text, q.answer)
                cited += bool(a_rag.cited)
                if len(samples) < 12:
                    samples.append({"q": q.question, "expected": q.answer, "rag": a_rag.text, "plain": a_plain.text})
            n = len(qs[:per_kind])
            out[kind] = {"n": n, "with_rag": rag / n, "without": plain / n, "cited": cited / n}
            print(f"answers {kind:<10} n={n:<3} with RAG {rag / n:.3f}   without {plain / n:.3f}   "
                  f"cited a source {cited / n:.3f}")
    out["samples"] = samples
    (workdir / "answer_samples.json").write_text(json.dumps(samples, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
