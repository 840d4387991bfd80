"""The reward model: score at the last real token, pairwise training raises held-out pair accuracy, the run
folder loads as a RewardModel and scores (prompt, completion) texts, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchlm.config import ConfigError, load_config
from scratchlm.runs import build_model, load_run
from scratchlm.train.loop import train
from scratchlm.eval.preference import pair_accuracy
from scratchlm.model.reward import RewardModel
from scratchlm.train.reward_objective import Reward, reward_batch
from tests.test_dpo import PairShards, _base, held_out

SETS = ["train.batch_size=4", "train.seq_len=24", "train.log_every=1", "train.eval_every=0", "train.save_every=0",
        "train.warmup_steps=1", "train.objective=reward", "train.lr=3e-3"]


def test_score_reads_the_last_real_token_whatever_the_padding():
    torch.manual_seed(0)
    rm = RewardModel(build_model(load_config("debug", [])))
    ids = torch.randint(0, 256, (1, 9))
    alone = rm(ids[:, :6], torch.tensor([6]))
    padded = rm(torch.cat([ids[:, :6], torch.zeros(1, 3, dtype=torch.long)], 1), torch.tensor([6]))
    torch.testing.assert_close(alone, padded)
    b = reward_batch(PairShards(3), [0, 2], seq_len=24)
    assert b["input_ids"].shape == (4, 5) and b["lengths"].tolist() == [5, 5, 5, 5]
    assert b["input_ids"][0, 3] == 40 and b["input_ids"][2, 3] == 41  # chosen rows first, then rejected


def test_reward_training_learns_pairs_and_resumes_exactly(tmp_path):
    base = _base(tmp_path)
    sets = SETS + ["train.batch_size=16", "train.max_steps=32", "train.save_every=16"]

    def run(out, stop=None, resume=False):
        c = load_config("debug", sets)
        return train(c, Reward(c, PairShards(40)), tmp_path / out, build_model(c), init_from=None if resume else base,
                     resume=resume, stop_at_step=stop, progress=False)

    full = run("full")
    first, second = run("split", stop=16), run("split", resume=True)
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=0, atol=1e-6)
    rm, _, cfg = load_run(tmp_path / "full")
    assert isinstance(rm, RewardModel)
    held = held_out()
    acc = pair_accuracy(rm, held, cfg.train.seq_len)
    # held-out prompts, and a reply token alone says nothing (chance is 0.5): the model read the prompt
    assert acc["accuracy"] >= 0.9 and acc["margin"] > 0 and full.losses[-1] < full.losses[0]


def test_reward_model_scores_texts_and_refuses_lora(tmp_path):
    from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer
    from scratchlm.model.reward import score_texts

    src = tmp_path / "t.txt"
    src.write_text("hello there, how are you? fine thanks " * 50)
    tok = Tokenizer.load(train_tokenizer(tmp_path / "tok", vocab_size=300, inputs=[src], show_progress=False))
    torch.manual_seed(0)
    rm = RewardModel(build_model(load_config("debug", [])))
    prompts = [[{"role": "user", "content": "hello"}]] * 2
    scores = score_texts(rm, tok, prompts, ["fine thanks", "how are you"])
    assert len(scores) == 2 and all(np.isfinite(scores)) and scores[0] != scores[1]
    cfg = load_config("debug", SETS + ["lora.rank=4"])
    with pytest.raises(ConfigError, match="set lora.rank=0"):
        Reward(cfg, PairShards(4)).prepare_model(build_model(cfg))
