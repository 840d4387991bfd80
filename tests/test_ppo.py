"""PPO in the one loop: a rollout batch (KL-shaped rewards, GAE, whitened advantages, the critic's values), a rule
reward is learned, a reward-model run's scores are used (and initialise the critic), the value loss falls on a fixed
batch, μ = 2 passes resume exactly, the run folder opens as a chat model with its critic beside it, config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scratchlm.config import ConfigError, load_config
from scratchlm.runs import build_model, load_run, save_run
from scratchlm.train.loop import train
from scratchlm.train.objectives import IGNORE
from scratchlm.train.ppo import CRITIC_DIR, PPO, ActorCritic
from scratchlm.model.reward import RewardModel
from tests.test_grpo import PromptShards

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from scratchlm.tokenizer.bpe import train_tokenizer

    d = tmp_path_factory.mktemp("ppo")
    src = d / "t.txt"
    src.write_text("What is 3 plus 4? <think>3+4=7</think>7 the cat sat on the mat\n" * 40, encoding="utf-8")
    return train_tokenizer(d / "tok", vocab_size=300, inputs=[src], show_progress=False)


@pytest.fixture(scope="module")
def tok(tok_dir):
    from scratchlm.tokenizer.bpe import Tokenizer

    return Tokenizer.load(tok_dir)


def _cfg(tok, *extra: str):
    return load_config("debug", [f"model.vocab_size={tok.vocab_size}", "model.init_std=0.2", "train.objective=ppo",
                                 "train.batch_size=4", "train.log_every=1", "train.eval_every=0", "train.save_every=0",
                                 "train.warmup_steps=1", "rl.num_generations=2", "rl.max_new_tokens=8",
                                 "rl.reward_funcs=length", "rl.reward_weights=1", *extra])


def _ppo(c, tok, **kw):
    """A PPO objective over in-memory prompts; the reference is the initial policy (build_model is seeded)."""
    return PPO(c, PromptShards(tok), tokenizer=tok, reference=build_model(c), **kw)


def _runs(tmp_path, tok, tok_dir):
    """An SFT-like run (the policy to start from) and a reward-model run of the same shape, saved as folders."""
    c = _cfg(tok)
    save_run(tmp_path / "sft", build_model(c), load_config("debug", [f"model.vocab_size={tok.vocab_size}",
                                                                      "model.init_std=0.2", "train.objective=sft"]),
             tok_dir)
    rcfg = load_config("debug", [f"model.vocab_size={tok.vocab_size}", "model.init_std=0.2", "train.objective=reward"])
    torch.manual_seed(1)
    save_run(tmp_path / "rm", RewardModel(build_model(rcfg)), rcfg, tok_dir)
    return tmp_path / "sft", tmp_path / "rm"


def test_rollout_batch_and_value_loss_falls_on_a_fixed_batch(tok):
    c = _cfg(tok, "rl.cliprange_value=100", "train.lr=3e-3")
    obj = _ppo(c, tok)
    model = obj.prepare_model(build_model(c))
    assert isinstance(model, ActorCritic) and float(model.critic.head.weight.detach().abs().sum()) == 0.0  # fresh zero head
    obj.setup(obj.info, model)
    b = obj.rollout([0, 1], seed=3)
    mask = b["targets"] != IGNORE
    assert b["input_ids"].shape[0] == 4 and b["advantages"].shape == b["targets"].shape
    assert float(b["advantages"][mask].mean()) == pytest.approx(0.0, abs=1e-5)  # whitened over the batch
    assert (b["advantages"][~mask] == 0).all() and (b["returns"][~mask] == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(b["old_logp"], model.policy.token_logprobs(b["input_ids"], b["targets"]))
    assert b["stats"]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy = reference
    assert b["stats"]["objective/scores"] == pytest.approx(b["stats"]["rewards/length/mean"], abs=1e-6)
    # The critic alone, on this one batch: the (unclipped) value loss falls.
    opt = torch.optim.Adam(model.critic.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, m = obj.loss(model, b)
        losses.append(m["loss/value"])
        opt.zero_grad()
        loss.backward()  # the policy's gradients are never stepped: only the critic moves
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
    assert {"policy/approxkl", "policy/clipfrac", "val/clipfrac", "val/mean", "entropy",
            "objective/rlhf_reward"} <= set(m)


def test_ppo_learns_the_length_reward_and_two_passes_resume_exactly(tok, tmp_path):
    sets = ("train.lr=1e-2", "train.max_steps=10", "rl.num_iterations=2", "rl.temperature=1.0", "rl.eps_high=0.2")

    def run(out, stop=None, resume=False):
        c = _cfg(tok, *sets, "train.save_every=5")
        torch.manual_seed(0)
        return train(c, _ppo(c, tok), tmp_path / out, build_model(c), resume=resume, stop_at_step=stop, progress=False)

    full = run("full")
    recs = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    lengths = [r["completion_length"] for r in recs if "completion_length" in r]
    assert np.mean(lengths[-4:]) < np.mean(lengths[:4])  # completions got shorter
    assert lengths[0] == lengths[1] and lengths[2] == lengths[3]  # μ = 2: each rollout taken by two steps
    assert max(r["policy/clipfrac"] for r in recs[1::2]) > 0  # the second pass is off-policy: clipping bites
    first = run("split", stop=5)  # between the two passes over the third rollout: the batch is in the checkpoint
    assert (tmp_path / "split" / "checkpoints" / "step-5" / "objective.pt").exists()
    second = run("split", resume=True)
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_the_critic_trains_at_its_own_multiple_of_the_learning_rate(tok, tmp_path, scale):
    """rl.critic_lr_scale: AdamW's first step moves every parameter with a gradient by its group's lr, so the largest
    move of a critic weight is scale × the largest move of a policy weight (vf_coef cannot do this: Adam divides
    it out)."""
    c = _cfg(tok, "train.lr=1e-3", "train.max_steps=1", "train.weight_decay=0", "train.schedule=constant",
             "train.grad_clip=0", "rl.temperature=1.0", f"rl.critic_lr_scale={scale}")
    torch.manual_seed(0)
    model = build_model(c)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    obj = _ppo(c, tok)
    train(c, obj, tmp_path / "run", model, progress=False)
    ac = obj.actor_critic
    policy_move = max(float((p.detach() - start[n]).abs().max()) for n, p in ac.policy.named_parameters())
    head_move = float(ac.critic.head.weight.detach().abs().max())  # the head started at zero
    assert policy_move == pytest.approx(1e-3, rel=1e-3)
    assert head_move == pytest.approx(scale * 1e-3, rel=1e-3)


def test_reward_model_scores_and_initialises_the_critic(tok, tok_dir, tmp_path):
    sft, rm_dir = _runs(tmp_path, tok, tok_dir)
    c = _cfg(tok, f"rl.reward_model={rm_dir}", f"train.init_from={sft}", "rl.missing_eos_penalty=1.0")
    obj = PPO(c, PromptShards(tok))  # tokenizer, reference and reward model all from the run folders
    model = obj.prepare_model(build_model(c))
    rm, _, _ = load_run(rm_dir)
    torch.testing.assert_close(model.critic.head.weight, rm.head.weight)
    assert obj.reward_model is not None and not any(p.requires_grad for p in obj.reward_model.parameters())
    assert all(p.requires_grad for p in model.critic.parameters())
    obj.setup(obj.info, model)
    b = obj.rollout([0, 1], seed=5)
    s = obj.sample(model.policy, [0, 1], seed=5)  # the same samples, scored here by hand
    nl = tok.encode("\n")
    seqs = [[int(t) for t in s.prompts[i // 2].ids] + comp + (nl if stop else [])
            for i, (comp, stop) in enumerate(zip(s.completions, s.stopped))]
    with torch.no_grad():
        want = [float(rm(torch.tensor([q]), torch.tensor([len(q)]))) - (0.0 if stop else 1.0)
                for q, stop in zip(seqs, s.stopped)]
    assert b["stats"]["objective/scores"] == pytest.approx(float(np.mean(want)), abs=1e-5)
    assert "rewards/length/mean" not in b["stats"]  # the reward model replaces the rule rewards


def test_whitened_scores_put_the_reward_models_scale_aside(tok, tok_dir, tmp_path):
    """rl.whiten_scores: the scores folded into the rewards have mean 0 and std 1 over the rollout batch (the logged
    objective/scores stay the raw ones), and the critic's head starts at zero instead of the reward head's scale."""
    sft, rm_dir = _runs(tmp_path, tok, tok_dir)
    c = _cfg(tok, f"rl.reward_model={rm_dir}", f"train.init_from={sft}", "rl.whiten_scores=true", "rl.kl_coef=0",
             "rl.gamma=1", "rl.lam=1")
    obj = PPO(c, PromptShards(tok))
    model = obj.prepare_model(build_model(c))
    assert float(model.critic.head.weight.detach().abs().sum()) == 0.0
    obj.setup(obj.info, model)
    b = obj.rollout([0, 1], seed=5)
    raw, _ = obj._scores(obj.sample(model.policy, [0, 1], seed=5))
    assert b["stats"]["objective/scores"] == pytest.approx(float(raw.mean()), abs=1e-5)
    # No KL and zero values with γ = λ = 1: every completion token's return is that completion's whitened score.
    first = (b["targets"] != IGNORE).float().argmax(1)
    returns = b["returns"][torch.arange(len(first)), first]
    torch.testing.assert_close(returns, (raw - raw.mean()) / raw.std(), atol=1e-5, rtol=0)


def test_run_folder_opens_as_a_chat_model_with_the_critic_beside(tok, tok_dir, tmp_path):
    sft, rm_dir = _runs(tmp_path, tok, tok_dir)
    c = _cfg(tok, "train.max_steps=2", f"rl.reward_model={rm_dir}")
    res = train(c, PPO(c, PromptShards(tok)), tmp_path / "ppo", build_model(c), init_from=sft, tokenizer_dir=tok_dir,
                progress=False)
    assert res.status == "done"
    model, tokenizer, cfg = load_run(tmp_path / "ppo")
    from scratchlm.engine import LLMEngine
    from scratchlm.engine.sampling import SamplingParams
    from scratchlm.model.transformer import Transformer

    assert type(model) is Transformer and cfg.train.objective == "ppo"
    ids, _ = tokenizer.encode_chat([{"role": "user", "content": "What is 3 plus 4?"}], add_generation_prompt=True)
    out = LLMEngine(model, tokenizer).generate([ids], SamplingParams(temperature=0, max_new_tokens=4))
    assert len(out[0]) > 0
    critic, _, _ = load_run(tmp_path / "ppo" / CRITIC_DIR)
    assert isinstance(critic, RewardModel)


def test_config_errors(tok, tok_dir, tmp_path):
    from scratchlm.tokenizer.bpe import train_tokenizer
    from scratchlm.train.stage import train_stage

    with pytest.raises(ConfigError, match="--init-from"):
        train_stage("ppo", tmp_path / "x", "debug", progress=False)
    with pytest.raises(ConfigError, match="--init-from"):
        PPO(_cfg(tok), PromptShards(tok)).prepare_model(build_model(_cfg(tok)))
    with pytest.raises(ConfigError, match="rl.reward_model=.*no such folder"):
        PPO(_cfg(tok, f"rl.reward_model={tmp_path / 'nope'}"), PromptShards(tok))
    sft, _ = _runs(tmp_path, tok, tok_dir)
    with pytest.raises(ConfigError, match="'sft' run, not a reward model"):
        PPO(_cfg(tok, f"rl.reward_model={sft}"), PromptShards(tok))
    # A reward model that reads another tokenizer's ids.
    src = tmp_path / "other.txt"
    src.write_text("an entirely different corpus of words\n" * 30, encoding="utf-8")
    other = train_tokenizer(tmp_path / "tok2", vocab_size=280, inputs=[src], show_progress=False)
    rcfg = load_config("debug", [f"model.vocab_size={tok.vocab_size}", "train.objective=reward"])
    save_run(tmp_path / "rm2", RewardModel(build_model(rcfg)), rcfg, other)
    c = _cfg(tok, f"rl.reward_model={tmp_path / 'rm2'}", f"train.init_from={sft}")
    with pytest.raises(ConfigError, match="tokenizer.json is not the one"):
        PPO(c, PromptShards(tok)).prepare_model(build_model(c))


def test_lora_trains_the_policy_adapters_and_the_whole_critic(tok, tok_dir, tmp_path):
    sft, _ = _runs(tmp_path, tok, tok_dir)
    c = _cfg(tok, "train.max_steps=2", "lora.rank=2", "lora.targets=wq,wv", "train.lr=1e-2")
    res = train(c, PPO(c, PromptShards(tok)), tmp_path / "ppo", build_model(c), init_from=sft, tokenizer_dir=tok_dir,
                progress=False)
    assert res.status == "done" and all(np.isfinite(res.losses))
    from scratchlm.model.lora import lora_modules
    from scratchlm.runs import run_kind

    assert run_kind(tmp_path / "ppo") == "adapter"
    model, _, _ = load_run(tmp_path / "ppo")  # the base from lora.base, the adapters on it
    mods = lora_modules(model)
    assert mods and any(float(m.lora_B.weight.detach().abs().sum()) > 0 for m in mods.values())  # B starts at 0: trained
    base, _, _ = load_run(sft)
    critic, _, _ = load_run(tmp_path / "ppo" / CRITIC_DIR)
    assert not torch.equal(critic.lm.embed.weight, base.embed.weight)  # the critic's whole trunk trained
