"""scratchlm.padding: the one right-padding helper, against hand-written tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchlm.padding import real_mask, right_pad


def test_right_pad_puts_ids_first_and_pad_after_with_the_real_lengths():
    ids, lengths = right_pad([[5, 6, 7], [8], np.array([9, 10])])
    assert ids.dtype == torch.int64 and lengths.dtype == torch.int64
    assert torch.equal(ids, torch.tensor([[5, 6, 7], [8, 0, 0], [9, 10, 0]]))
    assert torch.equal(lengths, torch.tensor([3, 1, 2]))


def test_right_pad_to_a_given_length_with_another_pad_value():
    ids, lengths = right_pad([[1, 2], []], pad=-100, length=4)
    assert torch.equal(ids, torch.tensor([[1, 2, -100, -100], [-100, -100, -100, -100]]))
    assert torch.equal(lengths, torch.tensor([2, 0]))
    with pytest.raises(ValueError, match="does not fit length=2"):
        right_pad([[1, 2, 3]], length=2)


def test_real_mask_marks_positions_before_each_rows_length():
    assert torch.equal(real_mask(torch.tensor([3, 1, 0]), 3),
                       torch.tensor([[True, True, True], [True, False, False], [False, False, False]]))
