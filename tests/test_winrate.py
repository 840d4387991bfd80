"""Win-rate of two runs judged by a reward-model run, in both orders: a position-biased judge cancels out, a
run against itself ties, and the verdicts are the reward model's own scores."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scratchlm.cli import main
from scratchlm.config import load_config
from scratchlm.eval.tasks import generate_replies
from scratchlm.eval.winrate import load_prompts, win_rate
from scratchlm.model.transformer import Transformer
from scratchlm.runs import load_run, save_run
from scratchlm.tokenizer.bpe import train_tokenizer
from scratchlm.model.reward import RewardModel, score_texts

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PROMPTS = [[{"role": "user", "content": c}] for c in ("hi", "1+1?", "写一句诗", "who are you")]


def test_both_orders_cancel_a_position_bias():
    first_wins = lambda p, a, b: [1.0] * len(p)  # noqa: E731 - a judge that always picks the first reply
    r = win_rate(PROMPTS, ["a"] * 4, ["b"] * 4, first_wins)
    assert (r["win_rate"], r["ties"], r["position_consistency"]) == (0.5, 4, 0.0)
    longer = lambda p, a, b: [0.5 if len(x) == len(y) else float(len(x) > len(y)) for x, y in zip(a, b)]  # noqa: E731
    r = win_rate(PROMPTS, ["long reply", "x", "long", "yy"], ["s", "longer", "s", "zz"], longer)
    assert (r["wins"], r["losses"], r["ties"], r["win_rate"], r["position_consistency"]) == (2, 1, 1, 0.625, 1.0)


def test_runs_judged_by_a_reward_model_run(tmp_path, capsys):
    tok = train_tokenizer(tmp_path / "tok", vocab_size=512, show_progress=False)
    for name, seed in (("a", 0), ("b", 1)):
        cfg = load_config("debug", ["model.init_std=0.1"])
        torch.manual_seed(seed)
        save_run(tmp_path / name, Transformer(cfg.model), cfg, tok)
    rcfg = load_config("debug", ["train.objective=reward"])
    torch.manual_seed(2)
    save_run(tmp_path / "rm", RewardModel(Transformer(rcfg.model)), rcfg, tok)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p[0]["content"]}, ensure_ascii=False) + "\n" for p in PROMPTS))
    assert load_prompts(tmp_path / "p.jsonl") == PROMPTS
    argv = ["eval", str(tmp_path / "a"), "--tasks", "winrate", "--vs", str(tmp_path / "b"), "--judge", str(tmp_path / "rm"),
            "--prompts", str(tmp_path / "p.jsonl"), "--max-new-tokens", "6", "--out", str(tmp_path / "w.json")]
    assert main(argv) == 0
    assert "win-rate vs" in capsys.readouterr().out
    got = json.loads((tmp_path / "w.json").read_text())["winrate"]
    # the same verdicts by hand: each run's greedy replies, scored by the reward model one at a time
    replies = [generate_replies(*load_run(tmp_path / n)[:2], [{"messages": p} for p in PROMPTS], 6) for n in "ab"]
    rm, rtok, _ = load_run(tmp_path / "rm")
    ra, rb = (score_texts(rm, rtok, PROMPTS, r) for r in replies)
    wins = sum(x > y for x, y in zip(ra, rb))
    ties = sum(x == y for x, y in zip(ra, rb))
    assert (got["wins"], got["ties"], got["n"]) == (wins, ties, 4)
    assert got["mean_preference"] == pytest.approx(sum(1 / (1 + math.exp(y - x)) for x, y in zip(ra, rb)) / 4)
    assert got["position_consistency"] == 1.0  # a reward model reads each reply alone
    # against itself every prompt ties
    argv[5] = str(tmp_path / "a")
    assert main(argv) == 0
    assert json.loads((tmp_path / "w.json").read_text())["winrate"]["win_rate"] == 0.5
    argv[7] = str(tmp_path / "b")  # a language model is no judge
    assert main(argv) == 1
    assert "must be a reward-model run" in capsys.readouterr().err
