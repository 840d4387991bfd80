"""rag: chunking, the exact similarity reference vs the sqlite-vec store, persistence, kills, re-indexing,
errors, BM25 + fusion, prompts with citations, and the CLI. Uses the model-free hash embedder (fast)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sqlean")
pytest.importorskip("sqlite_vec")

from scratchlm.rag.chunking import Document, chunk_document, chunk_spans, load_documents, sentence_ends
from scratchlm.rag.embedders import HashEmbedder
from scratchlm.rag.index import index_paths
from scratchlm.rag.retrieve import Retriever, bm25_tokens
from scratchlm.rag.similarity import distances, reciprocal_rank_fusion, top_k
from scratchlm.rag.store import VectorStore

# ---------------------------------------------------------------------------------------------------
# chunking

PIECES = ["Hello world. ", "Is it? ", "Yes!\n", "床前明月光，疑是地上霜。", "举头望明月；", "低头思故乡……",
          "\n\n", "a" * 37, " word", "。", "Mr. Smith went home.  ", "“引号。”", "tail"]


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(PIECES) for _ in range(n))


@pytest.mark.parametrize("size,overlap", [(1, 0), (7, 3), (40, 10), (120, 0), (400, 80)])
def test_chunks_cover_every_character(size, overlap):
    rng = random.Random(size)
    for trial in range(30):
        text = random_text(rng, rng.randint(0, 60))
        spans = chunk_spans(text, size, overlap)
        covered = np.zeros(len(text), dtype=bool)
        prev_start, prev_end = -1, 0
        for start, end in spans:
            assert 0 <= start < end <= len(text) and end - start <= size
            assert start > prev_start, "chunks move forward"
            assert start <= prev_end, "no gap between chunks"
            assert prev_end - start <= max(overlap, 0), "overlap at most `overlap` characters"
            covered[start:end] = True
            prev_start, prev_end = start, end
        assert covered.all(), (text, spans)
        if text:
            assert spans[-1][1] == len(text)
        chunks = chunk_document(Document("d.txt", text), size, overlap)
        assert all(c.text == text[c.start:c.end] and c.text.strip() for c in chunks)
        assert [c.index for c in chunks] == list(range(len(chunks)))


def test_chunks_prefer_sentence_ends_in_both_languages():
    text = "One sentence here. Another one follows! 床前明月光，疑是地上霜。举头望明月，低头思故乡。"
    ends = sentence_ends(text)
    assert text[: ends[0]] == "One sentence here. "
    assert text.index("霜。") + 2 in ends and text.index("乡。") + 2 == len(text)
    spans = chunk_spans(text, size=30, overlap=0)
    assert [text[a:b] for a, b in spans][:3] == ["One sentence here. ", "Another one follows! ", "床前明月光，疑是地上霜。举头望明月，低头思故乡。"]
    # a full stop needs whitespace after it to end a sentence, so a decimal number is never split
    assert 4 not in sentence_ends("3.14 is pi")


def test_chunk_args_are_checked():
    with pytest.raises(ValueError, match="overlap"):
        chunk_spans("abc", size=10, overlap=10)
    with pytest.raises(ValueError, match="size"):
        chunk_spans("abc", size=0, overlap=0)


def test_load_documents_and_errors(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\nBody.", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "title": "T"}\n', encoding="utf-8")
    assert load_documents(tmp_path / "a.md") == [Document("a.md", "# Title\n\nBody.")]
    assert [d.source for d in load_documents(tmp_path / "b.jsonl")] == ["b.jsonl:1", "b.jsonl:3"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string 'text'"):
        load_documents(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"text": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.jsonl:1: invalid JSON"):
        load_documents(tmp_path / "broken.jsonl")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match=r"bin.txt: not UTF-8"):
        load_documents(tmp_path / "bin.txt")
    with pytest.raises(ValueError, match=r"x.pdf: unsupported file type"):
        load_documents(tmp_path / "x.pdf")


# ---------------------------------------------------------------------------------------------------
# the exact reference and the sqlite-vec store


def test_reference_distances_match_definitions():
    V = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    q = np.array([0.0, 1.0])
    np.testing.assert_allclose(distances(V, q, "l2"), [np.sqrt(9 + 9), np.sqrt(2), 1.0])
    np.testing.assert_allclose(distances(V, q, "l1"), [6.0, 2.0, 1.0])
    np.testing.assert_allclose(distances(V, q, "cosine"), [1 - 4 / 5, 1.0, 1.0])
    idx, d = top_k(V, q, 2, "L1")
    assert idx.tolist() == [2, 1] and d.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="unknown metric 'dot'"):
        distances(V, q, "dot")


def make_store(path: Path, dim: int, metric: str, vectors: np.ndarray) -> VectorStore:
    from scratchlm.rag.chunking import Chunk

    store = VectorStore(path, "random", dim, metric)
    chunks = [Chunk("r.txt", i, i, i + 1, f"chunk {i}") for i in range(len(vectors))]
    store.replace_file(path.parent / "r.txt", "r.txt", "sha", chunks, vectors)
    return store


@pytest.mark.parametrize("metric", ["cosine", "l2", "l1"])
def test_store_top_k_equals_exact_reference(tmp_path, metric):
    rng = np.random.default_rng(0)
    V = rng.normal(size=(500, 24)).astype(np.float32)
    with make_store(tmp_path / f"{metric}.db", 24, metric, V) as store:
        ids = [r[0] for r in store.db.execute("SELECT id FROM chunks ORDER BY id")]  # row i of V ↔ ids[i]
        for _ in range(10):
            q = rng.normal(size=24).astype(np.float32)
            ref_idx, ref_d = top_k(V, q, 10, metric)
            for m in ("cosine", "l2", "l1"):  # the db's own metric (vec0 KNN) and the two others (scan)
                got = store.search(q, 10, m)
                exp_idx, exp_d = top_k(V, q, 10, m)
                assert [i for i, _ in got] == [ids[j] for j in exp_idx], m
                np.testing.assert_allclose([d for _, d in got], exp_d, rtol=1e-4, atol=1e-5)


def test_extra_metric_tables_use_knn_and_stay_in_sync(tmp_path):
    from scratchlm.rag.chunking import Chunk

    rng = np.random.default_rng(2)
    V = rng.normal(size=(300, 16)).astype(np.float32)
    with VectorStore(tmp_path / "m.db", "random", 16, ["l1", "cosine", "l1"]) as store:
        assert store.metrics == ["l1", "cosine"]
        chunks = [Chunk("r.txt", i, i, i + 1, f"c{i}") for i in range(300)]
        store.replace_file(tmp_path / "r.txt", "r.txt", "a", chunks, V)
        store.replace_file(tmp_path / "r.txt", "r.txt", "b", chunks[:100], V[:100])  # shrink: old rows go
        assert store.check() == [] and store.count() == 100
        ids = [r[0] for r in store.db.execute("SELECT id FROM chunks ORDER BY id")]
        q = rng.normal(size=16).astype(np.float32)
        for m in ("l1", "cosine", "l2"):
            assert [i for i, _ in store.search(q, 7, m)] == [ids[j] for j in top_k(V[:100], q, 7, m)[0]]
    with VectorStore(tmp_path / "m.db", create=False) as store:
        assert store.metrics == ["l1", "cosine"]


def test_store_survives_reopen_and_records_embedder(tmp_path):
    V = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    make_store(tmp_path / "s.db", 8, "l2", V).close()
    with VectorStore(tmp_path / "s.db", create=False) as store:
        assert (store.embedder, store.dim, store.metric, store.count()) == ("random", 8, "l2", 20)
        assert store.check() == []
        assert store.search(V[3], 1)[0][1] == pytest.approx(0.0, abs=1e-6)


def test_wrong_embedder_corrupt_and_locked_errors(tmp_path):
    V = np.zeros((2, 8), dtype=np.float32)
    make_store(tmp_path / "s.db", 8, "cosine", V).close()
    with pytest.raises(ValueError, match=r"s\.db: built with embedder 'random' \(dim 8\), not 'hash-256'"):
        VectorStore(tmp_path / "s.db", "hash-256", 256)
    with VectorStore(tmp_path / "s.db") as store, pytest.raises(ValueError, match=r"s\.db: built with embedder"):
        Retriever(store, HashEmbedder())
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ValueError, match=r"junk\.db: not a valid rag database"):
        VectorStore(tmp_path / "junk.db", create=False)
    # a real SQLite file whose pages were overwritten in the middle
    raw = bytearray((tmp_path / "s.db").read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)
    (tmp_path / "torn.db").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"torn\.db: "):
        VectorStore(tmp_path / "torn.db", create=False)
    import sqlean

    other = sqlean.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE t(x)")
    other.commit()
    other.close()
    with pytest.raises(ValueError, match=r"other\.db: an SQLite file but not a rag database"):
        VectorStore(tmp_path / "other.db", create=False)
    with pytest.raises(FileNotFoundError, match=r"missing\.db: no such rag database"):
        VectorStore(tmp_path / "missing.db", create=False)
    # locked: another connection holds an exclusive lock (WAL lets readers past a plain write lock)
    holder = sqlean.connect(tmp_path / "s.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO meta VALUES ('x', 'y')")
    try:
        with pytest.raises(ValueError, match=r"s\.db: database is locked"):
            VectorStore(tmp_path / "s.db", timeout=0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_store_is_wal_and_readers_pass_a_writer(tmp_path):
    # The indexer writes while the server reads: in WAL mode the reader sees the last commit, not a lock error.
    import sqlean

    V = np.eye(2, 8, dtype=np.float32)
    make_store(tmp_path / "s.db", 8, "cosine", V).close()
    with VectorStore(tmp_path / "s.db") as store:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    writer = sqlean.connect(tmp_path / "s.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM chunks")  # uncommitted: readers must still see both chunks
    try:
        with VectorStore(tmp_path / "s.db", create=False, timeout=0.1) as reader:
            assert reader.count() == 2 and len(reader.search(V[0], k=2)) == 2
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# ---------------------------------------------------------------------------------------------------
# indexing


def write_docs(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "fruit.md").write_text("Bananas are yellow. Apples are red or green. Cherries are small and red.", encoding="utf-8")
    (folder / "poem.txt").write_text("床前明月光，疑是地上霜。举头望明月，低头思故乡。", encoding="utf-8")
    (folder / "db.jsonl").write_text('{"text": "SQLite is an embedded database engine."}\n'
                                     '{"text": "BM25 ranks documents by term frequency."}\n', encoding="utf-8")


def test_index_is_incremental_and_reindex_leaves_no_stale_chunk(tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs)
    emb = HashEmbedder()
    with VectorStore(tmp_path / "i.db", emb.name, emb.dim) as store:
        rep = index_paths(store, emb, [docs], size=40, overlap=10, show_progress=False)
        assert sorted(rep.indexed) == ["db.jsonl", "fruit.md", "poem.txt"] and rep.chunks == store.count()
        rep = index_paths(store, emb, [docs], size=40, overlap=10, show_progress=False)
        assert rep.indexed == [] and len(rep.skipped) == 3
        (docs / "fruit.md").write_text("Grapes are purple.", encoding="utf-8")
        rep = index_paths(store, emb, [docs], size=40, overlap=10, show_progress=False)
        assert rep.indexed == ["fruit.md"]
        texts = store.all_texts()[1]
        assert "Grapes are purple." in texts and not any("Banana" in t or "Cherries" in t for t in texts)
        assert store.check() == []
        # other chunking settings → other chunks: every file is redone
        rep = index_paths(store, emb, [docs], size=400, overlap=0, show_progress=False)
        assert len(rep.indexed) == 3 and store.check() == []
        hits = Retriever(store, emb).search("purple grapes", k=1, mode="hybrid")
        assert hits[0].ref == "fruit.md#0"
        # a file deleted from the folder is removed on the next index of that folder
        (docs / "poem.txt").unlink()
        rep = index_paths(store, emb, [docs], size=400, overlap=0, show_progress=False)
        assert rep.removed == ["poem.txt"] and rep.indexed == [] and store.check() == []
        assert not any("明月" in t for t in store.all_texts()[1])
    with pytest.raises(ValueError, match="empty database"):
        VectorStore(tmp_path / "fresh.db")
    assert not (tmp_path / "fresh.db").exists()


KILL_SCRIPT = textwrap.dedent("""
    import sys, zlib, numpy as np
    from pathlib import Path
    from scratchlm.rag.embedders import Embedder
    from scratchlm.rag.index import index_paths
    from scratchlm.rag.store import VectorStore

    class Fast(Embedder):
        name, dim = "fast", 16
        def embed_passages(self, texts):
            # cheap, deterministic vectors: the time goes into the database writes we want to interrupt
            return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=16) for t in texts]).astype("f4")

    # SIGKILL this process after KILL_AFTER chunk inserts: always inside some file's transaction, whatever the
    # machine's speed (a timer raced the indexer: on a fast machine it had finished before the kill)
    kill_after = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if kill_after:
        import os, signal
        calls = [0]
        tables = VectorStore._tables
        def counting(self):
            calls[0] += 1
            if calls[0] == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return tables(self)
        VectorStore._tables = counting

    store = VectorStore(sys.argv[1], "fast", 16)
    print("start", flush=True)
    index_paths(store, Fast(), [sys.argv[2]], size=20, overlap=0, batch=4096, show_progress=False)
    print("done", flush=True)
""")


@pytest.mark.parametrize("kill_at", [0.5, 2.5])  # files done when killed: halfway into the first / the third
def test_kill_during_indexing_leaves_db_consistent(tmp_path, kill_at):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"f{i:02d}.txt").write_text(" ".join(f"Sentence {i}-{j}." for j in range(600)), encoding="utf-8")
    per_file = len(chunk_document(load_documents(docs / "f00.txt", "f00.txt")[0], 20, 0))  # f00-f09: same length
    kill_after = int(per_file * kill_at) + 1
    script = tmp_path / "index.py"
    script.write_text(KILL_SCRIPT, encoding="utf-8")
    db = tmp_path / "k.db"
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(docs), str(kill_after)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert proc.stdout.readline().strip() == "start"
    assert proc.wait(timeout=120) == -signal.SIGKILL  # killed mid-transaction, not finished
    with VectorStore(db, create=False) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store.check() == [], "every file fully old or fully new"
        done = len(store.files())
        assert done == int(kill_at)  # the file being written when killed left nothing behind
        for path, source, n in store.files():
            assert n == len(chunk_document(load_documents(path, source)[0], 20, 0))
    # indexing again finishes the job without duplicating what was already there
    subprocess.run([sys.executable, str(script), str(db), str(docs)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    with VectorStore(db, create=False) as store:
        assert len(store.files()) == 40 and store.check() == []


# ---------------------------------------------------------------------------------------------------
# BM25, fusion, answers


def test_bm25_tokens_split_chinese_into_unigrams_and_bigrams():
    assert bm25_tokens("The Moon, 明月光!", frozenset({"the"})) == ["moon", "明", "月", "光", "明月", "月光"]
    assert bm25_tokens("") == []


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "b", "d"]], k=60)
    # c: 1/63 + 1/61 = 0.032266 > b: 2/62 = 0.032258 > a: 1/61 > d: 1/63
    assert fused == ["c", "b", "a", "d"]
    assert reciprocal_rank_fusion([["x", "y"], ["y", "x"]]) == ["x", "y"]  # a tie keeps first-seen order
    assert reciprocal_rank_fusion([["x", "y"], ["y", "x"]], weights=[1, 2]) == ["y", "x"]


def test_build_messages_fits_and_cites():
    from scratchlm.rag.answer import build_messages, cited_refs, question_lang
    from scratchlm.rag.store import Hit

    hits = [Hit(1, "a.md", 0, "Paris is the capital of France. " * 5, 0.1), Hit(2, "b.md", 3, "Other text " * 20, 0.2)]
    msgs, refs = build_messages("What is the capital of France?", hits)
    assert refs == ["a.md#0", "b.md#3"] and "[a.md#0] Paris" in msgs[0]["content"]
    msgs, refs = build_messages("What is the capital of France?", hits, fit=lambda m: len(m[0]["content"]) < 300)
    assert refs == ["a.md#0"] and len(msgs[0]["content"]) < 300
    assert question_lang("谁写了《静夜思》？") == "zh" and "资料" in build_messages("谁写的？", hits)[0][0]["content"]
    assert cited_refs("It is Paris [a.md#0], see [zz#9] and [a.md#0].", refs) == ["a.md#0"]


def test_answer_question_with_a_tiny_run(tmp_path):
    torch = pytest.importorskip("torch")
    from scratchlm.config import load_config
    from scratchlm.engine.offline import LLM
    from scratchlm.model.transformer import Transformer
    from scratchlm.rag.answer import answer_question
    from scratchlm.rag.embedders import RunEmbedder
    from scratchlm.rag.store import Hit
    from scratchlm.runs import load_run, save_run
    from scratchlm.tokenizer.bpe import train_tokenizer

    text = tmp_path / "t.txt"
    text.write_text("\n".join(["Sources: the cat sat on the mat", "床前明月光 Question Answer"] * 20), encoding="utf-8")
    tok_dir = train_tokenizer(tmp_path / "tok", vocab_size=300, inputs=[text], show_progress=False)
    cfg = load_config("debug", ["model.vocab_size=300"])
    torch.manual_seed(0)
    run = save_run(tmp_path / "run", Transformer(cfg.model), cfg, tok_dir)
    model, tok, _ = load_run(run)
    hits = [Hit(1, "a.md", 0, "the cat sat on the mat " * 40, 0.1)]
    ans = answer_question(LLM(model, tok), "Where did the cat sit?", hits, max_new_tokens=8)
    assert ans.sources == ["a.md#0"] and "[a.md#0]" in ans.with_citations()
    # The citation follows retrieval: two documents indexed, each question retrieves its own, and the answer
    # cites that one (and its prompt holds that one's text), never the other.
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cat.md").write_text("the cat sat on the mat", encoding="utf-8")  # short: the debug context is 128
    (docs / "moon.txt").write_text("the moon shone", encoding="utf-8")
    emb = HashEmbedder()
    with VectorStore(tmp_path / "cite.db", emb.name, emb.dim) as store:
        index_paths(store, emb, [docs], size=400, overlap=0, show_progress=False)
        retriever = Retriever(store, emb)
        cited = {}
        for question, want, other in [("Where did the cat sit?", "cat.md#0", "moon"),
                                      ("Did the moon shine?", "moon.txt#0", "the cat sat")]:
            found = retriever.search(question, k=1, mode="hybrid")
            got = answer_question(LLM(model, tok), question, found, max_new_tokens=8)
            assert got.sources == [want] and got.with_citations().endswith(f"[{want}]"), (question, got)
            assert other not in got.prompt
            cited[question] = got.sources
        assert len({tuple(v) for v in cited.values()}) == 2
    prompt_ids = tok.encode_chat([{"role": "user", "content": ans.prompt}], add_generation_prompt=True)[0]
    assert len(prompt_ids) <= cfg.model.max_seq_len - 8
    emb = RunEmbedder(run)
    v = emb.embed_passages(["the cat", "床前明月光 and a longer text", ""])
    assert v.shape == (3, cfg.model.d_model) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    # right padding does not change a row's vector (causal attention never looks ahead)
    np.testing.assert_allclose(emb.embed_passages(["the cat"])[0], v[0], atol=1e-5)
    assert emb.name.startswith("run:run@")


def test_cli_index_search(tmp_path, capsys):
    from scratchlm.cli import main

    docs = tmp_path / "docs"
    write_docs(docs)
    db = tmp_path / "c.db"
    assert main(["rag", "index", str(docs), "--db", str(db), "--embedder", "hash", "--quiet"]) == 0
    assert "indexed 3 files" in capsys.readouterr().out
    assert main(["rag", "search", "--db", str(db), "embedded database", "--bm25", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(" 1. [db.jsonl:1#0]")
    assert main(["rag", "search", "--db", str(db), "明月", "--metric", "l1", "--k", "1"]) == 0
    assert "[poem.txt#0]" in capsys.readouterr().out
    assert main(["rag", "search", "--db", str(tmp_path / "nope.db"), "x"]) == 1
    assert "nope.db: no such rag database" in capsys.readouterr().err
    assert main(["rag", "index", str(docs), "--db", str(db), "--embedder", "hash", "--metric", "l2", "--quiet"]) == 1
    assert "c.db: has vec0 tables for cosine, not l2" in capsys.readouterr().err


def test_eval_set_questions_point_at_documents_holding_the_answer(tmp_path):
    from scratchlm.rag.evalset import answer_contains, doc_of, recall_at_k, write_eval_set

    corpus, questions = write_eval_set(tmp_path, n_per_kind=5, n_docs_per_lang=40, seed=1)
    docs = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]
    assert sorted({q.kind for q in questions}) == ["en_next", "en_who", "zh_author", "zh_next"] and len(questions) == 20
    for q in questions:
        assert q.relevant and all(answer_contains(docs[i], q.answer) for i in q.relevant), q
        assert not answer_contains(q.question, q.answer), f"the question gives the answer away: {q}"
    assert write_eval_set(tmp_path, n_per_kind=5, n_docs_per_lang=40, seed=1)[1] == questions  # deterministic
    assert doc_of("corpus.jsonl:1") == 0
    emb = HashEmbedder()
    with VectorStore(tmp_path / "e.db", emb.name, emb.dim) as store:
        index_paths(store, emb, [corpus], show_progress=False)
        rec = recall_at_k(Retriever(store, emb), questions, k=5, mode="bm25")
    assert set(rec) == {"en", "zh", "en_who", "en_next", "zh_author", "zh_next"} and rec["en"] >= 0.8
