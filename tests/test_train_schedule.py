"""LR schedules: warmup, cosine, WSD and constant as pure functions of the step."""

import math

import pytest

from scratchlm.config import load_config
from scratchlm.train.schedule import lr_at, lr_factor


def test_warmup_is_linear_and_reaches_peak():
    f = [lr_factor(s, 100, 10, "cosine") for s in range(10)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(b - a == pytest.approx(0.1) for a, b in zip(f, f[1:]))


def test_cosine_decays_monotonically_to_min_ratio():
    f = [lr_factor(s, 100, 10, "cosine", min_lr_ratio=0.1) for s in range(10, 101)]
    assert f[0] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in zip(f, f[1:]))
    assert f[-1] == pytest.approx(0.1)
    mid = lr_factor(55, 100, 10, "cosine", min_lr_ratio=0.1)  # halfway through the decay
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_wsd_holds_then_decays_linearly():
    f = [lr_factor(s, 100, 10, "wsd", min_lr_ratio=0.0, wsd_decay_frac=0.2) for s in range(100)]
    assert all(v == 1.0 for v in f[10:80])
    assert f[90] == pytest.approx(0.5)
    assert all(b < a for a, b in zip(f[80:], f[81:]))


def test_constant_and_config_wrapper():
    cfg = load_config("debug", ["train.schedule=constant", "train.lr=0.01", "train.warmup_steps=2"]).train
    assert lr_at(0, cfg) == pytest.approx(0.005)
    assert lr_at(50, cfg) == pytest.approx(0.01)


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="train.schedule"):
        lr_factor(50, 100, 10, "linear")
