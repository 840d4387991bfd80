"""The demo's PPO stage (RLHF): the reward stage's model scores the policy's own replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scratchlm.demo.common import before_after, train_post_sft
from scratchlm.demo.data import prepare_once
from scratchlm.demo.settings import DemoSettings
from scratchlm.eval.tasks import evaluate_tasks


def run_ppo_stage(out: Path, s: DemoSettings, paths: dict[str, Path], sft_scores: dict[str, tuple[int, int]],
                  progress: bool) -> dict[str, Any]:
    """PPO from the SFT run with the reward stage's model as the reward, on the training prompts of s.ppo_tasks:
    held-out mean reward of sampled and of greedy replies (overall and per task) and held-out task accuracy, before
    and after."""
    from scratchlm.eval.preference import held_out_reward
    from scratchlm.runs import load_run

    synth = out / "data" / "pref_synth"
    chosen = out / "data" / "ppo_prompts.jsonl"
    lines = (synth / "prompt_train.jsonl").read_text(encoding="utf-8").splitlines()
    chosen.write_text("".join(f"{line}\n" for line in lines if json.loads(line)["task"] in s.ppo_tasks),
                      encoding="utf-8")
    prompts = prepare_once("prompt", paths["tokenizer"], chosen, out / "data" / "ppo_prompts")
    sets = [*s.ppo_sets, f"rl.reward_model={out / 'reward'}"]
    run_dir = train_post_sft("ppo", out, s, {**paths, "ppo": prompts}, s.ppo_steps, sets,
                              "PPO: the reward model scores the model's own replies", progress)
    rm, _, _ = load_run(out / "reward")
    sft, _, _ = load_run(out / "sft")
    policy, tokenizer, _ = load_run(run_dir)
    n_new = 3 * s.max_new_tokens  # the open-ended replies need room
    # PPO raises the reward of the policy's samples (temperature 1), so that is the number; greedy replies beside it.
    held = synth / f"prompt_{s.eval_split}.jsonl"
    before, after = (held_out_reward(m, tokenizer, rm, held, s.eval_per_task, n_new, temperature=1.0,
                                     samples=s.ppo_eval_samples, seed=s.seed) for m in (sft, policy))
    greedy = [held_out_reward(m, tokenizer, rm, held, s.eval_per_task, n_new)["mean"] for m in (sft, policy)]
    tasks = {t for t in (*s.pref_sizes, s.grpo_task) if t in sft_scores}  # grpo_task when SFT holds it: the most fragile
    scores, _ = evaluate_tasks(policy, tokenizer, paths["prompt_eval"], s.eval_per_task, s.max_new_tokens, tasks=tasks)
    return {"prompts": before["n"], "samples": s.ppo_eval_samples, "reward": [before["mean"], after["mean"]],
            "reward_greedy": greedy,
            "reward_tasks": {k: [before["tasks"][k], after["tasks"][k]] for k in sorted(before["tasks"])},
            "tasks": before_after(sft_scores, scores)}
