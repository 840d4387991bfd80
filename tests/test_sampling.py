"""engine/sampling.py on hand-made logits: the parameter checks and their messages, the repetition penalty in
process_logits, top-k / top-p at their boundaries and on any leading shape, the draw's shape, and the batched
sample_rows against the row-by-row path (mixed penalties, greedy and sampled rows, errors per batch and per row)."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.engine.sampling import (SamplingParams, apply_frequency_presence_penalty, min_p_filter,
                                       process_logits, sample, sample_rows, top_k_filter, top_p_filter)

INF = float("inf")


@pytest.mark.parametrize("field, value, rule", [
    ("temperature", -0.5, ">= 0"),
    ("top_k", -1, ">= 0 (0 disables it)"),
    ("top_p", 0.0, "in (0, 1]"),
    ("top_p", 1.5, "in (0, 1]"),
    ("repetition_penalty", 0.0, "> 0"),
    ("min_p", -0.1, "in [0, 1]"),
    ("min_p", 1.01, "in [0, 1]"),
    ("frequency_penalty", -2.01, "in [-2, 2]"),
    ("frequency_penalty", 2.01, "in [-2, 2]"),
    ("presence_penalty", -2.01, "in [-2, 2]"),
    ("presence_penalty", 2.01, "in [-2, 2]"),
    ("max_new_tokens", 0, ">= 1"),
])
def test_each_bad_parameter_is_named_with_its_rule(field, value, rule):
    with pytest.raises(ValueError) as e:
        SamplingParams(**{field: value})
    assert str(e.value) == f"SamplingParams.{field}={value!r} must be {rule}"


def test_boundary_values_are_accepted_and_empty_stop_strings_are_not():
    p = SamplingParams(temperature=0, top_k=0, top_p=1.0, repetition_penalty=1e-3, max_new_tokens=1)
    assert p.greedy and not SamplingParams(temperature=1e-6).greedy
    for bound in (-2, 2):  # OpenAI's range is closed at both ends
        SamplingParams(frequency_penalty=bound, presence_penalty=bound)
    for m in (0.0, 1.0):
        SamplingParams(min_p=m)
    with pytest.raises(ValueError) as e:
        SamplingParams(stop_strings=["ok", ""])
    assert str(e.value) == "SamplingParams.stop_strings must not contain an empty string"


def test_process_logits_applies_the_penalty_to_seen_tokens_only():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    params = SamplingParams(temperature=0.5, repetition_penalty=2.0)
    # seen: 2 → 2 / 2 = 1, −2 → −2 · 2 = −4; then everything / 0.5
    torch.testing.assert_close(process_logits(logits, params, seen), torch.tensor([[2.0, -8.0, 2.0, 1.0]]))
    torch.testing.assert_close(process_logits(logits, params), logits / 0.5)  # no mask: no penalty


def test_top_k_equal_to_the_vocabulary_keeps_everything():
    logits = torch.tensor([[3.0, -1.0, 0.0]])
    assert top_k_filter(logits, 3) is logits and top_k_filter(logits, 0) is logits
    assert top_k_filter(logits, 2).tolist() == [[3.0, -INF, 0.0]]


def test_top_p_boundaries():
    # p = 1 keeps every token, even one whose share rounds to nothing (the mass before it sums to 1.0)
    logits = torch.tensor([[0.0, 0.0, -200.0]])
    assert top_p_filter(logits, 1.0) is logits
    # two equally likely tokens: p = 0.5 is reached by the first alone, so the second is dropped (mass before it
    # is exactly 0.5 ≥ p); just above 0.5 both stay
    two = torch.tensor([[0.0, 0.0]])
    assert torch.isinf(top_p_filter(two, 0.5)).sum().item() == 1
    assert torch.isinf(top_p_filter(two, 0.5001)).sum().item() == 0


def test_filters_work_on_the_last_axis_of_any_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, generator=g)  # e.g. [B, S, V]: S (3) and V (5) differ
    rows = x.reshape(6, 5)
    for k in (2, 3, 4):
        torch.testing.assert_close(top_k_filter(x, k), top_k_filter(rows, k).reshape(2, 3, 5))
        assert (torch.isfinite(top_k_filter(x, k)).sum(-1) == k).all()
    for p in (0.3, 0.7, 0.95):
        torch.testing.assert_close(top_p_filter(x, p), top_p_filter(rows, p).reshape(2, 3, 5))
        for r in range(6):
            torch.testing.assert_close(top_p_filter(rows[r:r + 1], p), top_p_filter(rows, p)[r:r + 1])
    for m in (0.2, 0.6):  # min-p's threshold is each row's own maximum, not the batch's or another axis'
        torch.testing.assert_close(min_p_filter(x, m), min_p_filter(rows, m).reshape(2, 3, 5))
        for r in range(6):
            torch.testing.assert_close(min_p_filter(rows[r:r + 1], m), min_p_filter(rows, m)[r:r + 1])


def test_sample_gives_one_token_per_row():
    logits = torch.tensor([[0.0, 5.0, 1.0], [9.0, 0.0, 1.0]])
    assert sample(logits, SamplingParams(temperature=0)).tolist() == [1, 0]
    peaked = torch.tensor([[-INF, 0.0, -INF], [0.0, -INF, -INF]])
    drawn = sample(peaked, SamplingParams(temperature=1.0), torch.Generator().manual_seed(1))
    assert drawn.shape == (2,) and drawn.tolist() == [1, 0]


def _one_by_one(logits, params, seen, seeds):
    """The reference: each row alone through process_logits and sample, with its own generator."""
    out = []
    for i, p in enumerate(params):
        gen = torch.Generator().manual_seed(seeds[i])
        out.append(int(sample(process_logits(logits[i:i + 1], p, seen[i]), p, gen)))
    return out


def test_sample_rows_equals_one_row_at_a_time_with_mixed_penalties():
    base = torch.tensor([4.0, 3.0, 1.0, 0.0, -1.0, -2.0])
    logits = torch.stack([base] * 5)

    def seen(*ids):
        m = torch.zeros(1, 6, dtype=torch.bool)
        m[0, list(ids)] = True
        return m

    params = [SamplingParams(temperature=0, repetition_penalty=2.0),   # 4 → 2 < 3: picks token 1
              SamplingParams(temperature=0, repetition_penalty=50.0),  # 4, 3 → 0.08, 0.06: picks token 2
              SamplingParams(temperature=0, repetition_penalty=1.0),   # no penalty: token 0
              SamplingParams(temperature=0.7, top_k=4, repetition_penalty=2.0),
              SamplingParams(temperature=1.3, top_p=0.8, repetition_penalty=1.5)]
    rows_seen = [seen(0), seen(0, 1), seen(0), seen(0), None]  # the last row has a penalty but no mask
    seeds = [0, 1, 2, 3, 4]
    want = _one_by_one(logits, params, rows_seen, seeds)
    assert want[:3] == [1, 2, 0]
    got = sample_rows(logits, params, rows_seen, [torch.Generator().manual_seed(s) for s in seeds])
    assert got == want


def test_sample_rows_reports_errors_per_batch_and_per_row():
    V = 6
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0, repetition_penalty=1.5)] * 3
    bad_mask = [torch.zeros(1, V + 1, dtype=torch.bool)] * 3  # the wrong width: the batched step fails
    out = sample_rows(logits, params, bad_mask, [None] * 3)
    assert len(out) == 3 and all(isinstance(e, RuntimeError) for e in out) and out[0] is out[2]
    nan = logits.clone()
    nan[1] = math.nan  # only row 1's draw fails
    hot = [SamplingParams(temperature=1.0, seed=i) for i in range(3)]
    out = sample_rows(nan, hot, [None] * 3, [torch.Generator().manual_seed(i) for i in range(3)])
    assert isinstance(out[1], RuntimeError) and isinstance(out[0], int) and isinstance(out[2], int)


def test_frequency_penalty_alone_and_the_logits_dtype():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    counts = torch.tensor([[0.0, 3.0, 1.0]])
    # frequency 1 with no presence penalty: each logit minus its count
    assert apply_frequency_presence_penalty(logits, counts, 1.0, 0.0).tolist() == [[1.0, -1.0, -0.5]]
    # float32 counts on bf16 logits: the result stays bf16 (as in the batched path), with bf16's rounding
    half = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.bfloat16)
    out = apply_frequency_presence_penalty(half, counts, 0.3, 0.1)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, half - torch.tensor([[0.0, 1.0, 0.4]]).to(torch.bfloat16))


def test_sample_rows_with_output_counts_equals_one_row_at_a_time():
    V = 6
    logits = torch.stack([torch.tensor([4.0, 3.5, 1.0, 0.0, -1.0, -2.0])] * 4)
    counts = torch.zeros(1, V)
    counts[0, 0] = 2.0  # token 0 generated twice

    params = [SamplingParams(temperature=0, frequency_penalty=1.0),    # 4 − 2 = 2 < 3.5: token 1
              SamplingParams(temperature=0, presence_penalty=0.2),     # 4 − 0.2 = 3.8 > 3.5: token 0
              SamplingParams(temperature=0, frequency_penalty=2.0),    # no counts for this row: no penalty, token 0
              SamplingParams(temperature=0.8, frequency_penalty=0.5, presence_penalty=0.5)]
    rows_counts = [counts, counts, None, counts]
    want = []
    for i, p in enumerate(params):
        gen = torch.Generator().manual_seed(i)
        want.append(int(sample(process_logits(logits[i:i + 1], p, counts=rows_counts[i]), p, gen)))
    assert want[:3] == [1, 0, 0]
    got = sample_rows(logits, params, [None] * 4, [torch.Generator().manual_seed(i) for i in range(4)], rows_counts)
    assert got == want
