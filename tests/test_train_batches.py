"""train/batches.py: first-fit packing, the pretraining mix's slots and rows made into padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchlm.train.batches import IGNORE, Row, first_fit_rows, mix_slot, rows_batch


def test_first_fit_rows_places_every_document_once_within_capacity():
    # hand-made: capacity 10; 6 goes to a new row, 5 does not fit beside it, 4 fits beside the 6, 5 beside the 5
    lens = np.array([6, 5, 4, 5, 3])
    rows = first_fit_rows(np.arange(5), lens, 10, open_rows=2)
    assert [r.tolist() for r in rows] == [[0, 2], [1, 3], [4]]
    # with one open row it is greedy in order: a row closes as soon as the next document does not fit
    assert [r.tolist() for r in first_fit_rows(np.arange(5), lens, 10, open_rows=1)] == [[0], [1, 2], [3, 4]]
    rng = np.random.default_rng(0)
    lens = rng.integers(20, 90, size=500)
    order = rng.permutation(500)
    rows = first_fit_rows(order, lens, 129)
    assert sorted(int(d) for r in rows for d in r) == list(range(500))
    assert all(lens[r].sum() <= 129 for r in rows)
    assert len(rows) < len(first_fit_rows(order, lens, 129, open_rows=1))  # fewer rows: less padding


def test_mix_slot_holds_the_share_in_every_run_of_slots():
    slots = [mix_slot(g, 0.25) for g in range(8)]
    # floor((g+1)/4) > floor(g/4) at g = 3, 7: those are pretraining rows 0, 1; the rest count SFT rows 0..5
    assert slots == [(False, 0), (False, 1), (False, 2), (True, 0), (False, 3), (False, 4), (False, 5), (True, 1)]


def test_rows_batch_pads_right_with_ignored_targets_and_a_padding_document():
    long = Row(np.array([5, 6, 7, 8]), np.array([1, 1, 0, 1]), np.array([0, 0, 0, 1]))
    short = Row(np.array([9, 10]), np.array([1, 1]), None)
    b = rows_batch([long, short], use_mask=True, use_docs=True)
    assert torch.equal(b["input_ids"], torch.tensor([[5, 6, 7], [9, 0, 0]]))
    # 7 is masked out; 8 starts another document than 7's; the short row's padding is never a target
    assert torch.equal(b["targets"], torch.tensor([[6, IGNORE, IGNORE], [10, IGNORE, IGNORE]]))
    assert torch.equal(b["doc_ids"], torch.tensor([[0, 0, 0], [-1, -1, -1]]))
    assert "doc_ids" not in rows_batch([short], use_mask=True, use_docs=True)


# -- where rows come from: fixed windows and whole documents, over several epochs ----------------------------------
def _shards(lens, mask=True):
    from tests.test_train_loop import ArrayShards

    starts = np.cumsum([0, *lens[:-1]])
    ids = (np.arange(sum(lens)) * 7) % 500
    m = (np.arange(sum(lens)) % 3 != 0).astype(np.uint8) if mask else None
    return ArrayShards(ids, m, starts, kind="sft")


def test_packed_windows_cut_the_stream_in_a_seeded_order_per_epoch():
    from scratchlm.train.batches import PackedWindows

    sh = _shards([30, 25, 45])  # 100 tokens, three documents
    w = PackedWindows(sh, seq_len=9, seed=5)  # (100 − 1) // 9 = 11 windows of 10 tokens
    assert w.n == 11
    for epoch in (0, 1, 2):
        perm = np.random.default_rng([5, epoch]).permutation(11)
        assert [w.window(epoch * 11 + i) for i in range(11)] == perm.tolist()
    assert [w.window(i) for i in range(3)] == np.random.default_rng([5, 0]).permutation(11)[:3].tolist()  # back
    plain = PackedWindows(sh, seq_len=9, seed=5, shuffle=False)
    assert [plain.window(i) for i in range(13)] == list(range(11)) + [0, 1]
    row = plain.get(3)  # tokens 27..36: the end of document 0 and the start of document 1
    assert row.ids.tolist() == sh.ids[27:37].tolist() and row.ids.dtype == np.int64
    assert row.mask.tolist() == sh.mask[27:37].tolist()
    assert row.docs.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    del sh.doc_starts  # shards without a document index: no document ids
    assert plain.get(3).docs is None and plain.get(3).ids.tolist() == row.ids.tolist()


def test_packed_docs_rows_over_epochs_of_different_lengths():
    from scratchlm.train.batches import PackedDocs, first_fit_rows

    lens = [5, 3, 7, 2, 6, 4, 3, 5, 2, 11]  # the last one is longer than a row: truncated to seq_len + 1 = 8
    sh = _shards(lens)
    d = PackedDocs(sh, seq_len=7, seed=0)  # packing and shuffling by default
    cut = np.minimum(lens, 8)
    want_rows = [first_fit_rows(np.random.default_rng([0, e]).permutation(10), cut, 8) for e in range(4)]
    counts = [len(r) for r in want_rows]
    assert len(set(counts)) > 1 and d.n == counts[0]  # epochs hold different numbers of rows
    pos = 0
    for e in range(4):
        for docs in want_rows[e]:
            row = d.get(pos)
            want_ids = np.concatenate([sh.ids[sh.doc_starts[k]:sh.doc_starts[k] + cut[k]] for k in docs])
            assert row.ids.tolist() == want_ids.tolist(), (e, pos)
            assert row.docs.tolist() == [int(k) for k in docs for _ in range(cut[k])]
            assert row.mask.tolist() == np.concatenate(
                [sh.mask[sh.doc_starts[k]:sh.doc_starts[k] + cut[k]] for k in docs]).tolist()
            assert len(row.ids) <= 8
            pos += 1
    first = want_rows[0][0]  # back to epoch 0 after three others: its first row again
    assert d.get(0).docs.tolist() == [int(k) for k in first for _ in range(cut[k])]


def test_packed_docs_one_per_row_without_packing_or_masks():
    from scratchlm.config import ConfigError
    from scratchlm.train.batches import PackedDocs

    sh = _shards([4, 6, 3], mask=False)
    d = PackedDocs(sh, seq_len=7, seed=2, pack=False)
    order = np.random.default_rng([2, 0]).permutation(3)
    assert d.n == 3 and [d.get(i).docs[0] for i in range(3)] == order.tolist()
    assert d.get(0).mask is None  # pretraining-style documents carry no loss mask
    fixed = PackedDocs(sh, seq_len=7, seed=2, shuffle=False, pack=False)
    assert [fixed.get(i).ids.tolist() for i in range(3)] == [sh.ids[0:4].tolist(), sh.ids[4:10].tolist(),
                                                              sh.ids[10:13].tolist()]
    sh.doc_starts = np.zeros(0, dtype=np.int64)
    with pytest.raises(ConfigError) as e:
        PackedDocs(sh, seq_len=7, seed=2, where="train.data")
    assert str(e.value) == "train.data: the dataset has no documents"
    with pytest.raises(ConfigError, match="^data: the dataset has no documents$"):
        PackedDocs(sh, seq_len=7, seed=2)


def test_packed_windows_count_whole_windows_and_refuse_a_stream_too_short():
    from scratchlm.config import ConfigError
    from scratchlm.train.batches import PackedWindows
    from tests.test_train_loop import ArrayShards

    assert PackedWindows(ArrayShards(np.arange(10)), seq_len=9, seed=0).n == 1  # exactly seq_len + 1 tokens
    # 18 tokens: a second window would need tokens 9..18, one more than there is
    assert PackedWindows(ArrayShards(np.arange(18)), seq_len=9, seed=0).n == 1
    assert PackedWindows(ArrayShards(np.arange(19)), seq_len=9, seed=0).n == 2
    with pytest.raises(ConfigError) as e:
        PackedWindows(ArrayShards(np.arange(9)), seq_len=9, seed=0)
    assert str(e.value) == ("data: 9 tokens is fewer than train.seq_len+1=10; lower train.seq_len or prepare "
                            "more data")
    with pytest.raises(ConfigError, match="^train.val_data: 9 tokens"):
        PackedWindows(ArrayShards(np.arange(9)), seq_len=9, seed=0, where="train.val_data")


def test_packed_windows_row_is_a_function_of_the_position_alone():
    from scratchlm.train.batches import PackedWindows

    sh = _shards([30, 25, 45], mask=False)
    walked = PackedWindows(sh, seq_len=9, seed=5)
    want = [walked.get(p).ids.tolist() for p in range(30)]  # epochs 0, 1 and the start of 2, in order
    for p in (11, 25, 12, 3):  # a fresh reader (a resumed run) may start in any epoch
        assert PackedWindows(sh, seq_len=9, seed=5).get(p).ids.tolist() == want[p]
    assert walked.get(4).mask is None  # pretraining shards carry no loss mask: the row has none either


def test_rows_batch_a_longest_row_without_document_ids():
    # the pretraining mix: a long window with no document index beside a short SFT row that has one
    long = Row(np.array([5, 6, 7, 8, 9]), None, None)
    short = Row(np.array([1, 2, 3]), None, np.array([4, 4, 5]))
    b = rows_batch([long, short], use_mask=True, use_docs=True)
    assert b["input_ids"].shape == b["targets"].shape == b["doc_ids"].shape == (2, 4)
    assert torch.equal(b["doc_ids"], torch.tensor([[-1, -1, -1, -1], [4, 4, -1, -1]]))
    assert torch.equal(b["targets"], torch.tensor([[6, 7, 8, 9], [2, IGNORE, IGNORE, IGNORE]]))
