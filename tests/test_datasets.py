"""Token shards: the writer/reader pair (reads across shard boundaries, doc index, masks, side file,
clear errors on bad or incomplete folders) and the near-dup MinHash pieces it relies on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scratchlm.shards.datasets import open_shards
from scratchlm.data.neardup import NearDupIndex, jaccard_estimate, lsh_params, minhash_signatures
from scratchlm.shards.writer import ShardWriter


def _docs(seed: int, n: int, vocab: int = 1000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(1, 30))) for _ in range(n)]


def _write(path, docs, shard_tokens, kind="pretrain", masks=None, side=None, vocab=1000):
    with ShardWriter(path, kind, vocab, shard_tokens, with_mask=masks is not None, with_side=side is not None) as w:
        # two add() calls: the writer must continue shards and offsets across calls
        for lo, hi in ((0, len(docs) // 2), (len(docs) // 2, len(docs))):
            part = docs[lo:hi]
            w.add(np.concatenate(part) if part else np.zeros(0, np.int64), np.array([len(d) for d in part]),
                  None if masks is None else np.concatenate(masks[lo:hi]),
                  None if side is None else side[lo:hi])
        return w.finish({"counts": {}})


@pytest.mark.parametrize("shard_tokens", [1, 7, 10_000])
def test_read_across_shard_boundaries(tmp_path, shard_tokens):
    docs = _docs(0, 40)
    flat = np.concatenate(docs)
    meta = _write(tmp_path / "ds", docs, shard_tokens)
    ds = open_shards(tmp_path / "ds")
    assert len(meta["shards"]) == -(-len(flat) // shard_tokens) and ds.n_tokens == len(flat)
    rng = np.random.default_rng(1)
    for _ in range(50):
        start = int(rng.integers(0, len(flat)))
        length = int(rng.integers(0, len(flat) - start + 1))
        assert np.array_equal(ds.read(start, length), flat[start : start + length])
    assert ds.read(0, len(flat)).dtype == np.uint16
    assert [ds.doc(i).tolist() for i in range(ds.n_docs)] == [d.tolist() for d in docs]
    assert ds.doc_starts.tolist() == np.concatenate([[0], np.cumsum([len(d) for d in docs])[:-1]]).tolist()
    assert ds.doc_lens.tolist() == [len(d) for d in docs]
    with pytest.raises(IndexError, match=r"read\(.*outside"):
        ds.read(len(flat) - 2, 3)
    with pytest.raises(IndexError, match="document 40 is outside"):
        ds.doc(40)


def test_masks_and_side_file(tmp_path):
    docs = _docs(2, 9)
    masks = [np.arange(len(d)) % 2 for d in docs]
    side = [json.dumps({"answer": str(i), "columns": {"task": "t"}}) for i in range(len(docs))]
    _write(tmp_path / "sft", docs, 5, kind="sft", masks=masks)
    ds = open_shards(tmp_path / "sft")
    assert np.array_equal(ds.read_mask(0, ds.n_tokens), np.concatenate(masks))
    assert [ds.doc_mask(i).tolist() for i in range(len(docs))] == [m.tolist() for m in masks]
    _write(tmp_path / "prompt", docs, 5, kind="prompt", side=side)
    ds = open_shards(tmp_path / "prompt")
    assert ds.prompt(3).answer == "3" and ds.prompt(3).columns == {"task": "t"}
    assert ds.prompt(8).ids.tolist() == docs[8].tolist() and ds.read_mask(0, 1) is None


def test_empty_dataset_and_writer_checks(tmp_path):
    _write(tmp_path / "empty", [], 10)
    ds = open_shards(tmp_path / "empty")
    assert (ds.n_tokens, ds.n_docs, ds.read(0, 0).tolist()) == (0, 0, [])
    with ShardWriter(tmp_path / "w", "pretrain", 100, 10) as w:
        with pytest.raises(ValueError, match="token id 100 ≥ vocab_size 100"):
            w.add(np.array([1, 100]), np.array([2]))
        with pytest.raises(ValueError, match="doc_lens sum to 3 but 2 tokens"):
            w.add(np.array([1, 2]), np.array([3]))
        with pytest.raises(ValueError, match="mask must be given not"):
            w.add(np.array([1]), np.array([1]), mask=np.array([1]))
    assert list((tmp_path / "w").iterdir()) == []  # left without finish(): its files are gone


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a prepared dataset"):
        open_shards(tmp_path)
    meta = _write(tmp_path / "ds", _docs(3, 10), 8)
    shard = tmp_path / "ds" / meta["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])  # truncated
    with pytest.raises(ValueError, match=r"tokens-00000.bin: 14 bytes, expected 16"):
        open_shards(tmp_path / "ds")
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=r"shards\[0\] file .* is missing"):
        open_shards(tmp_path / "ds")
    (tmp_path / "ds" / "meta.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(ValueError, match="is not 'scratchlm-shards'"):
        open_shards(tmp_path / "ds")


# --- near-dup --------------------------------------------------------------------------------------


def test_lsh_params_match_datasketch():
    from datasketch.lsh import _optimal_param

    for t in (0.5, 0.7, 0.8, 0.9):
        assert lsh_params(t, 64) == _optimal_param(t, 64, 0.5, 0.5)


def _shingles(a, n=3):
    return {tuple(a[i : i + n]) for i in range(len(a) - n + 1)}


def test_minhash_estimates_jaccard_and_flags_near_dups():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 5000, size=400)
    docs = [base]
    for k in (2, 20, 80, 400):  # substitute k tokens
        d = base.copy()
        d[rng.choice(400, k, replace=False)] = rng.integers(5000, 6000, size=k)
        docs.append(d)
    starts = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    sig = minhash_signatures(np.concatenate(docs), starts)
    for i, d in enumerate(docs[1:], 1):
        true = len(_shingles(base) & _shingles(d)) / len(_shingles(base) | _shingles(d))
        assert abs(jaccard_estimate(sig[0], sig[i]) - true) < 0.15
    keep = NearDupIndex(0.8).filter(np.concatenate(docs), starts)
    assert keep.tolist() == [True, False, True, True, True]  # only the 2-token edit (J≈0.97) is a near-dup
    # Documents never straddle a boundary: the same docs in another batch order give the same signatures.
    order = [3, 0, 4, 1, 2]
    starts2 = np.concatenate([[0], np.cumsum([len(docs[i]) for i in order])])
    sig2 = minhash_signatures(np.concatenate([docs[i] for i in order]), starts2)
    assert np.array_equal(sig2, sig[order])


def test_near_dup_index_spans_batches_and_ignores_short_docs():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 1000, size=200)
    idx = NearDupIndex(0.8)
    assert idx.filter(a, [0, 200]).tolist() == [True]
    b = a.copy()
    b[100] = 1001
    short = np.array([7, 8])  # fewer tokens than a shingle: never called a near-dup
    ids = np.concatenate([b, short, short])
    assert idx.filter(ids, [0, 200, 202, 204]).tolist() == [False, True, True]
