"""GRPO in the one loop: rollouts through the engine become a batch with targets on the completions only,
advantages that sum to zero per group, the sampling policy's log-probs; a built-in reward is learned; resume is
exact; reward functions and their config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchlm.config import ConfigError, load_config
from scratchlm.shards.datasets import Prompt
from scratchlm.runs import build_model
from scratchlm.train.grpo import GRPO
from scratchlm.train.loop import train
from scratchlm.train.objectives import IGNORE
from scratchlm.train.rule_rewards import answer_reward, digits_reward, format_reward, parse_rewards

pytestmark = pytest.mark.usefixtures("one_thread")


class PromptShards:
    """In-memory prompt dataset with Shards' prompt API."""

    kind = "prompt"

    def __init__(self, tok, n: int = 8, task: str = "add2"):
        self.items = []
        for i in range(n):
            ids, _ = tok.encode_chat([{"role": "user", "content": f"What is {i} plus {i}?"}], add_generation_prompt=True)
            self.items.append(Prompt(np.asarray(ids), str(2 * i), {"task": task}))
        self.n_docs = n

    def prompt(self, i: int) -> Prompt:
        return self.items[i]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer

    d = tmp_path_factory.mktemp("grpo")
    src = d / "t.txt"
    src.write_text("What is 3 plus 4? <think>3+4=7</think>7 the cat sat on the mat\n" * 40, encoding="utf-8")
    t = Tokenizer.load(train_tokenizer(d / "tok", vocab_size=300, inputs=[src], show_progress=False))
    VOCAB["n"] = t.vocab_size  # a small corpus may stop short of 300 merges
    return t


VOCAB = {}


def _cfg(*extra: str):
    return load_config("debug", [f"model.vocab_size={VOCAB['n']}", "model.init_std=0.2", "train.objective=grpo",
                                 "train.batch_size=4", "train.log_every=1", "train.eval_every=0", "train.save_every=0",
                                 "train.warmup_steps=1", "rl.num_generations=4", "rl.max_new_tokens=8", *extra])


def test_rollout_batch_targets_completions_and_groups_sum_to_zero(tok):
    cfg = _cfg("rl.reward_funcs=length", "rl.reward_weights=1")
    torch.manual_seed(0)
    obj = GRPO(cfg, PromptShards(tok), tokenizer=tok)
    model = obj.prepare_model(build_model(cfg))
    obj.setup(obj.info, model)
    b = obj.rollout([0, 1], seed=3)
    x, y = b["input_ids"], b["targets"]
    assert x.shape[0] == 8 and b["advantages"].shape == (8,)
    torch.testing.assert_close(b["advantages"].view(2, 4).sum(1), torch.zeros(2), atol=1e-5, rtol=0)
    p0 = len(PromptShards(tok).prompt(0).ids)
    assert (y[0, : p0 - 1] == IGNORE).all() and y[0, p0 - 1] != IGNORE  # the first target is the first completion token
    with torch.no_grad():
        torch.testing.assert_close(b["old_logp"], model.token_logprobs(x, y))  # the sampling policy's own log-probs
    assert b["stats"]["completion_length"] > 0 and "rewards/length/mean" in b["stats"]
    again = obj.rollout([0, 1], seed=3)
    assert torch.equal(again["input_ids"], x)  # seeded: the same samples


@pytest.mark.parametrize("agg", ["grpo", "dr_grpo", "cispo"])
def test_one_step_on_a_rigged_reward_raises_that_tokens_probability(tok, monkeypatch, agg):
    # reward = 1 when the completion contains token X: one GRPO step (the real rollout and loss, a plain SGD update)
    # must make X more likely where the policy samples, here measured at every completion position of the batch.
    from scratchlm.train import rule_rewards

    rigged = {}
    monkeypatch.setitem(rule_rewards.REWARD_FUNCS, "has_x", lambda prompts, completions, completion_ids, **_: [
        float(rigged["x"] in ids) for ids in completion_ids])
    cfg = _cfg("rl.reward_funcs=has_x", "rl.reward_weights=1", "rl.num_generations=8", f"rl.loss_agg={agg}")
    torch.manual_seed(0)
    obj = GRPO(cfg, PromptShards(tok), tokenizer=tok)
    model = obj.prepare_model(build_model(cfg))
    obj.setup(obj.info, model)
    # X: a token in about half of the completions these (seeded) rollouts sample
    comps = obj.sample(model, [0, 1, 2, 3], seed=11).completions
    rigged["x"] = min(range(VOCAB["n"]), key=lambda v: abs(sum(v in c for c in comps) - len(comps) / 2))
    X = rigged["x"]
    b = obj.rollout([0, 1, 2, 3], seed=11)
    assert 0 < b["stats"]["reward"] < 1  # some groups hold both kinds of completion: there is a signal

    def p_x() -> float:
        with torch.no_grad():
            logits = model(b["input_ids"]).logits  # [B, T, V]
        return float(logits.softmax(-1)[..., X][b["targets"] != IGNORE].mean())

    before = p_x()
    loss, _ = obj.loss(model, b)
    loss.backward()
    with torch.no_grad():
        for prm in model.parameters():
            prm -= 0.01 * prm.grad  # a small step: the first-order effect (at 0.2 it overshoots)
    assert p_x() > 1.2 * before  # measured: 0.0099 → 0.0134


def test_grpo_learns_the_length_reward_and_resumes_exactly(tok, tmp_path):
    # −length/max_new_tokens: the policy learns to emit <|im_end|> sooner. Every other part is the real thing.
    sets = ("rl.reward_funcs=length", "rl.reward_weights=1", "train.lr=1e-2", "train.max_steps=12", "rl.temperature=1.0")

    def run(out, stop=None, resume=False):
        c = _cfg(*sets, "train.save_every=6")
        torch.manual_seed(0)
        return train(c, GRPO(c, PromptShards(tok), tokenizer=tok), tmp_path / out, build_model(c), resume=resume,
                     stop_at_step=stop, progress=False)

    full = run("full")
    import json

    recs = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    lengths = [r["completion_length"] for r in recs if "completion_length" in r]
    assert np.mean(lengths[-3:]) < np.mean(lengths[:3])  # completions got shorter
    first, second = run("split", stop=6), run("split", resume=True)
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dynamic", [True, False])
def test_dynamic_sampling_drops_the_groups_with_equal_rewards_and_keeps_the_rest(tok, monkeypatch, dynamic):
    # group 0's four completions all score 1 (no signal), group 1's score 0, 1, 0, 1, group 2's all score 0
    from scratchlm.train import rule_rewards

    scores = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    monkeypatch.setitem(rule_rewards.REWARD_FUNCS, "by_row", lambda prompts, completions, completion_ids, **_: [
        scores[i] for i in range(len(completion_ids))])
    cfg = _cfg("rl.reward_funcs=by_row", "rl.reward_weights=1", f"rl.dynamic_sampling={str(dynamic).lower()}")
    torch.manual_seed(0)
    obj = GRPO(cfg, PromptShards(tok), tokenizer=tok)
    model = obj.prepare_model(build_model(cfg))
    obj.setup(obj.info, model)
    every = obj.rollout([0, 1, 2], seed=3)
    assert every["stats"]["frac_reward_zero_std"] == pytest.approx(2 / 3)
    if dynamic:  # only group 1's rows, each with its own advantage (±, summing to zero)
        assert every["input_ids"].shape[0] == 4
        adv = every["advantages"]
        assert (adv[[1, 3]] > 0).all() and (adv[[0, 2]] < 0).all() and abs(float(adv.sum())) < 1e-5
        p1 = len(PromptShards(tok).prompt(1).ids)
        assert every["input_ids"][0, :p1].tolist() == PromptShards(tok).prompt(1).ids.tolist()
    else:  # all 12 rows; the equal-reward groups' advantages are zero
        assert every["input_ids"].shape[0] == 12
        assert (every["advantages"][:4] == 0).all() and (every["advantages"][8:] == 0).all()
    scores[:] = [1.0] * 12
    dead = obj.rollout([0, 1], seed=3)  # no group carries a signal: one row with advantage zero keeps the step defined
    assert dead["input_ids"].shape[0] == (1 if dynamic else 8) and (dead["advantages"] == 0).all()


@pytest.mark.parametrize("agg", ["grpo", "dr_grpo", "cispo"])
def test_every_aggregation_and_dynamic_sampling_train(tok, tmp_path, agg):
    c = _cfg("rl.reward_funcs=length,format", "rl.reward_weights=1,0.5", f"rl.loss_agg={agg}",
             "rl.dynamic_sampling=true", "train.max_steps=2", "rl.beta=0.0")
    res = train(c, GRPO(c, PromptShards(tok), tokenizer=tok), tmp_path / agg, build_model(c), progress=False)
    assert res.status == "done" and all(np.isfinite(res.losses))


def test_reward_functions_and_config_errors(tok):
    assert answer_reward([None] * 2, ["<think>1+1=2</think>2", "3"], answer=["2", "2"], task=["add2", "add2"]) == [1.0, 0.0]
    assert format_reward([None] * 3, ["<think>a</think>2", "2", "<think></think>2"]) == [1.0, 0.0, 0.0]
    # digits: the share of the answer's digits right, from the units; wrong lengths and signs count against it.
    got = digits_reward([None] * 7, ["<think>4+6=10 4+1+1=6 4+5=9</think>960", "91", "1019", "990", "no number",
                                     "-12", "-12"], answer=["990", "913", "929", "990", "990", "12", "-13"],
                        task=["add3"] * 5 + ["sub2"] * 2)
    assert got == [2 / 3, 0.0, 0.25, 1.0, 0.0, 0.0, 0.5]
    assert digits_reward([None], ["Paris"], answer=["Paris"], task=["identity"]) == [0.0]  # arithmetic only
    with pytest.raises(ConfigError, match="unknown nope"):
        parse_rewards("answer,nope", "1,1")
    with pytest.raises(ConfigError, match="2 weights for 1 reward functions"):
        parse_rewards("answer", "1,2")
    with pytest.raises(ConfigError, match="prepare --kind prompt"):
        GRPO(_cfg(), type("S", (), {"kind": "sft"})(), tokenizer=tok)
    # Open-ended prompts (a synth prompt file holds fortune / recite / continue too) cannot be checked: refused at
    # construction, naming the task, instead of stopping at the first one drawn mid-run.
    with pytest.raises(ConfigError, match=r"8 of 8 prompts are of task\(s\) 'fortune'.*drop `answer`"):
        GRPO(_cfg("rl.reward_funcs=answer", "rl.reward_weights=1"), PromptShards(tok, task="fortune"), tokenizer=tok)
    GRPO(_cfg("rl.reward_funcs=format", "rl.reward_weights=1"), PromptShards(tok, task="fortune"), tokenizer=tok)


def test_fsdp_on_several_processes_is_refused_up_front(tok, tmp_path, monkeypatch):
    # The engine samples outside the training forward (inference_mode, a different number of steps per rank):
    # FSDP2's sharded weights cannot serve it, so the loop stops before loading anything and names the way out.
    from scratchlm.train import distributed as D
    from scratchlm.train.dpo import DPO
    from scratchlm.train.ppo import PPO

    assert not GRPO.fsdp and not PPO.fsdp and DPO.fsdp
    monkeypatch.setattr(D, "setup_distributed", lambda device: D.DistInfo(rank=0, world_size=2, device=device))
    cfg = _cfg("train.parallel=fsdp", "train.max_steps=1")
    with pytest.raises(ConfigError, match="the grpo stage samples .* use train.parallel=ddp"):
        train(cfg, GRPO(cfg, PromptShards(tok), tokenizer=tok), tmp_path / "run", build_model(cfg), progress=False)
    assert not (tmp_path / "run").exists()


def test_two_passes_per_rollout_clip_on_the_second_and_resume_exactly_between_them(tok, tmp_path):
    # rl.num_iterations=2: each rollout batch serves two optimizer steps with its old log-probs kept, so the second
    # pass is off-policy (ratio ≠ 1: clipping bites with a large lr); a stop at an odd step falls between the passes.
    sets = ("rl.reward_funcs=length", "rl.reward_weights=1", "train.lr=3e-2", "train.max_steps=6",
            "rl.num_iterations=2", "train.save_every=3")

    def run(out, stop=None, resume=False):
        c = _cfg(*sets)
        torch.manual_seed(0)
        return train(c, GRPO(c, PromptShards(tok), tokenizer=tok), tmp_path / out, build_model(c), resume=resume,
                     stop_at_step=stop, progress=False)

    full = run("full")
    import json

    recs = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["clip_fraction"] == 0 for r in recs[0::2])  # the first pass: the policy that sampled
    assert max(r["clip_fraction"] for r in recs[1::2]) > 0
    assert [r["completion_length"] for r in recs[0::2]] == [r["completion_length"] for r in recs[1::2]]
    first, second = run("split", stop=3), run("split", resume=True)
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=0, atol=1e-6)
