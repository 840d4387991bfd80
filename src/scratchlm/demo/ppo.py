"""The demo's PPO stage (RLHF): the reward stage's model scores the policy's own replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scratchlm.demo.common import before_after, say, train_post_sft
from scratchlm.demo.data import prepare_once
from scratchlm.demo.settings import DemoSettings
from scratchlm.eval.tasks import evaluate_tasks


def ppo_chain(s: DemoSettings) -> list[str]:
    """The runs PPO's model is built from, in order: ["sft", "ppo"], or ["sft", "dpo", "ppo"] when s.ppo_init is
    "dpo" and DPO runs; a SystemExit names a ppo_init that is neither."""
    if s.ppo_init not in ("sft", "dpo"):
        raise SystemExit(f"scratchlm demo: ppo_init must be \"sft\" or \"dpo\", got {s.ppo_init!r}")
    return ["sft", "dpo", "ppo"] if s.ppo_init == "dpo" and "dpo" in s.stages else ["sft", "ppo"]


def run_ppo_stage(out: Path, s: DemoSettings, paths: dict[str, Path], sft_scores: dict[str, tuple[int, int]],
                  progress: bool) -> dict[str, Any]:
    """PPO from the run before it in `ppo_chain` (SFT, or DPO) with the reward stage's model as the reward, on the
    training prompts of s.ppo_tasks: held-out mean reward of sampled and of greedy replies (overall and per task),
    before (that run) and after, and held-out accuracy on every task against the SFT model's."""
    from scratchlm.eval.preference import held_out_reward
    from scratchlm.runs import load_run

    synth = out / "data" / "pref_synth"
    chosen = out / "data" / "ppo_prompts.jsonl"
    lines = (synth / "prompt_train.jsonl").read_text(encoding="utf-8").splitlines()
    chosen.write_text("".join(f"{line}\n" for line in lines if json.loads(line)["task"] in s.ppo_tasks),
                      encoding="utf-8")
    prompts = prepare_once("prompt", paths["tokenizer"], chosen, out / "data" / "ppo_prompts")
    chain = ppo_chain(s)
    if s.ppo_init == "dpo" and chain[-2] == "sft":
        say("PPO starts from SFT: ppo_init is \"dpo\" but DPO is not among the stages")
    sets = [*s.ppo_sets, f"rl.reward_model={out / 'reward'}"]
    run_dir = train_post_sft("ppo", out, s, {**paths, "ppo": prompts}, s.ppo_steps, sets,
                              f"PPO from {chain[-2].upper()}: the reward model scores the model's own replies", progress,
                              init=chain[-2])
    rm, _, _ = load_run(out / "reward")
    start, _, _ = load_run(out / chain[-2])
    policy, tokenizer, _ = load_run(run_dir)
    n_new = 3 * s.max_new_tokens  # the open-ended replies need room
    # PPO raises the reward of the policy's samples (temperature 1), so that is the number; greedy replies beside it.
    held = synth / f"prompt_{s.eval_split}.jsonl"
    before, after = (held_out_reward(m, tokenizer, rm, held, s.eval_per_task, n_new, temperature=1.0,
                                     samples=s.ppo_eval_samples, seed=s.seed) for m in (start, policy))
    greedy = [held_out_reward(m, tokenizer, rm, held, s.eval_per_task, n_new)["mean"] for m in (start, policy)]
    # every task SFT was scored on: PPO's model is the demo's final chat model, which must keep what SFT taught
    scores, _ = evaluate_tasks(policy, tokenizer, paths["prompt_eval"], s.eval_per_task, s.max_new_tokens,
                               tasks=set(sft_scores))
    return {"chain": chain, "prompts": before["n"], "samples": s.ppo_eval_samples, "reward": [before["mean"], after["mean"]],
            "reward_greedy": greedy,
            "reward_tasks": {k: [before["tasks"][k], after["tasks"][k]] for k in sorted(before["tasks"])},
            "tasks": before_after(sft_scores, scores)}
