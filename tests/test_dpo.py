"""DPO in the one loop: pair batches, loss log 2 at the start (policy = reference), learning raises held-out
preference accuracy, exact resume, LoRA on top, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scratchlm.config import ConfigError, load_config
from scratchlm.shards.datasets import Pair
from scratchlm.runs import build_model, load_run
from scratchlm.eval.preference import logprob_preference, preference_accuracy
from scratchlm.train.dpo import DPO, pair_batch
from scratchlm.train.loop import train
from scratchlm.train.objectives import IGNORE, Pretrain

SMALL = ["train.batch_size=4", "train.seq_len=24", "train.log_every=1", "train.eval_every=0", "train.save_every=0",
         "train.warmup_steps=1", "train.objective=dpo"]


def _combos(split: str) -> list[tuple[int, int]]:
    """Prompt tokens (a, c): a in 10..19 decides the preference, c in 20..29 is a distractor. A quarter of the
    (a, c) combinations are held out, so a held-out prompt (and pair) never appears in training."""
    every = [(a, c) for c in range(20, 30) for a in range(10, 20)]
    return [ac for ac in every if ((ac[0] + ac[1]) % 4 == 0) == (split == "held")]


class PairShards:
    """An in-memory preference dataset with Shards' pair API: prompt [1, c, a]; the chosen reply is 40 when a is
    even and 41 when odd, the rejected one the other. Each reply token is chosen in half the pairs and rejected in
    the rest, so no single token id separates them: the preference has to be read from the prompt."""

    kind = "preference"

    def __init__(self, n: int, offset: int = 0, split: str = "train"):
        combos = _combos(split)
        self.pairs = []
        for i in range(n):
            a, c = combos[(i * 7 + offset) % len(combos)]  # stride 7: spread over every a and c
            prompt = [1, c, a]  # a last: the first reply token is read right after it
            good, bad = (40, 41) if a % 2 == 0 else (41, 40)
            mask = [0] * len(prompt) + [1, 1]
            self.pairs.append(Pair(np.array(prompt + [good, 5]), np.array(mask), np.array(prompt + [bad, 5]),
                                   np.array(mask)))
        self.n_pairs = n
        self.meta = {"kind": "preference", "vocab_size": 256}

    def pair(self, i: int) -> Pair:
        return self.pairs[i]


def held_out(n: int = 20) -> PairShards:
    """Pairs whose prompts no training PairShards holds."""
    return PairShards(n, split="held")


def test_held_out_pairs_are_not_training_pairs_and_no_token_separates_them():
    train_prompts = {tuple(p.chosen[:3]) for p in PairShards(75).pairs}
    held = held_out(25).pairs
    assert len(train_prompts) == 75 and not train_prompts & {tuple(p.chosen[:3]) for p in held}
    chosen = [int(p.chosen[3]) for p in held]
    assert sorted(set(chosen)) == [40, 41] and {int(p.rejected[3]) for p in held} == {40, 41}


def _base(tmp_path):
    cfg = load_config("debug", ["train.batch_size=2", "train.seq_len=16", "train.max_steps=2", "train.log_every=1",
                                "train.eval_every=0", "train.save_every=0", "train.warmup_steps=1"])
    ids = np.tile(np.arange(100) % 90, 20)
    from tests.test_train_loop import ArrayShards

    train(cfg, Pretrain(cfg, ArrayShards(ids)), tmp_path / "base", build_model(cfg), progress=False)
    return tmp_path / "base"


def test_pair_batch_counts_only_the_replies_chosen_rows_first():
    shards = PairShards(3)
    b = pair_batch(shards, [0, 2], seq_len=24)
    assert b["input_ids"].shape == (4, 4)
    assert b["targets"][0].tolist() == [IGNORE, IGNORE, 40, 5]  # reply + its end, nothing of the prompt
    assert b["targets"][2].tolist() == [IGNORE, IGNORE, 41, 5]  # rejected of pair 0 after both chosen
    assert b["targets"][1].tolist() == [IGNORE, IGNORE, 40, 5]  # pair 2: a = 18, even


def test_dpo_starts_at_log2_learns_and_resumes_exactly(tmp_path):
    base = _base(tmp_path)
    sets = SMALL + ["train.batch_size=16", "train.max_steps=16", "train.lr=3e-3", "train.save_every=8", "pref.beta=0.5"]
    cfg = load_config("debug", sets)

    def run(out, stop=None, resume=False):
        c = load_config("debug", sets)
        return train(c, DPO(c, PairShards(40)), tmp_path / out, build_model(c), init_from=None if resume else base,
                     resume=resume, stop_at_step=stop, progress=False)

    full = run("full")
    assert full.losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference: margin 0, loss log 2
    assert full.losses[-1] < full.losses[0]
    first, second = run("split", stop=8), run("split", resume=True)
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=0, atol=1e-6)
    ref, _, _ = load_run(base)
    pol, _, _ = load_run(tmp_path / "full")
    before = preference_accuracy(ref, ref, held_out(), cfg)
    after = preference_accuracy(pol, ref, held_out(), cfg)
    assert before["accuracy"] == 0.0 and before["margin"] == 0.0  # the reference against itself: no preference
    assert after["accuracy"] >= 0.9 and after["margin"] > 0  # held-out prompts; chance is 0.5
    # The model's own log-probs: the margin is the implicit reward's divided by beta, plus the reference's own.
    own_ref, own_pol = logprob_preference(ref, held_out(), 24), logprob_preference(pol, held_out(), 24)
    assert own_pol["margin"] == pytest.approx(own_ref["margin"] + after["margin"] / 0.5, abs=1e-4)
    assert own_pol["accuracy"] >= 0.9


@pytest.mark.parametrize("loss_type", ["ipo", "simpo"])
def test_dpo_variants_train_with_lora(tmp_path, loss_type):
    base = _base(tmp_path)
    sets = SMALL + ["train.max_steps=4", "train.lr=1e-2", f"pref.loss_type={loss_type}", "lora.rank=4",
                    "lora.targets=wq,wv,w2"]
    cfg = load_config("debug", sets)
    obj = DPO(cfg, PairShards(40))
    res = train(cfg, obj, tmp_path / loss_type, build_model(cfg), init_from=base, progress=False)
    assert res.status == "done" and all(np.isfinite(res.losses)) and res.losses[-1] < res.losses[0]
    assert (obj.reference is None) == (loss_type == "simpo")  # SimPO is reference-free


def test_dpo_errors():
    cfg = load_config("debug", SMALL)
    from tests.test_train_loop import _shards

    with pytest.raises(ConfigError, match="prepare --kind preference"):
        DPO(cfg, _shards())
    with pytest.raises(ConfigError, match="pass --init-from SFT_RUN"):
        DPO(cfg, PairShards(4)).prepare_model(build_model(cfg))
    with pytest.raises(ConfigError, match="choose one of"):
        load_config("debug", ["pref.loss_type=kto"])


def test_dpo_validation_logs_its_own_metrics_and_the_objective_sees_the_policy(tmp_path):
    import json

    base = _base(tmp_path)
    sets = SMALL + ["train.max_steps=4", "train.lr=3e-3", "train.eval_every=2", "pref.beta=0.5"]
    cfg = load_config("debug", sets)
    obj = DPO(cfg, PairShards(40), val_shards=held_out(8))
    res = train(cfg, obj, tmp_path / "run", build_model(cfg), init_from=base, progress=False)
    vals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert [r["step"] for r in vals] == [2, 4] and all("val_accuracy" in r and "val_margin" in r for r in vals)
    assert "val_ppl" not in vals[0]  # a preference loss has no perplexity
    assert [v for _, v in res.val] == [r["val_loss"] for r in vals]
    assert obj.policy is not None and obj.policy is not obj.reference  # rollout stages generate with it


def test_to_device_moves_tensors_and_keeps_plain_fields():
    from scratchlm.train.batches import to_device

    b = to_device({"input_ids": torch.zeros(2, 3, dtype=torch.long), "answers": ["4", "7"]}, torch.device("cpu"))
    assert b["answers"] == ["4", "7"] and b["input_ids"].shape == (2, 3)
