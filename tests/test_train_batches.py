"""train/batches.py: first-fit packing, the pretraining mix's slots and rows made into padded batches."""

from __future__ import annotations

import numpy as np
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
