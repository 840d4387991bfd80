"""The demo's GRPO stage: a cold start (SFT on the RL task until it is right sometimes), then GRPO from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scratchlm.demo.common import before_after, check_stage_steps, say, train_demo_stage, train_post_sft
from scratchlm.demo.data import prepare_once
from scratchlm.demo.settings import DemoSettings, post_sft_sets
from scratchlm.eval.tasks import evaluate_tasks


def cold_start(out: Path, s: DemoSettings, paths: dict[str, Path], dev_prompts: Path, progress: bool) -> dict[str, Any]:
    """SFT from the SFT run on s.grpo_cold_sizes chats into out/grpo_cold, s.grpo_cold_every steps at a time, until
    the greedy accuracy on the first s.grpo_cold_dev s.grpo_task prompts of `dev_prompts` (training side) reaches
    s.grpo_cold_target or s.grpo_cold_steps are done; returns {"steps", "dev": [[step, accuracy], ...]}."""
    from scratchlm.data.synth import build_synth
    from scratchlm.config import load_run_config
    from scratchlm.eval.train_until import task_accuracy, train_until_accuracy
    from scratchlm.runs import load_run, save_run

    run_dir, data = out / "grpo_cold", out / "data"
    record = run_dir / "cold_start.json"
    check_stage_steps(run_dir, s.grpo_cold_steps)
    if (run_dir / "model.safetensors").exists() and record.exists():
        say(f"{run_dir} already trained; delete it to train again")
        return json.loads(record.read_text())
    chats = build_synth(data / "grpo_cold_synth", seed=s.seed, tasks=dict(s.grpo_cold_sizes))
    paths = {**paths, "grpo_cold": prepare_once("sft", paths["tokenizer"], chats["sft_train"], data / "grpo_cold_sft")}
    sets = post_sft_sets(s, s.grpo_cold_steps, [*s.grpo_cold_sets, f"train.save_every={s.grpo_cold_every}"])
    replayed = ", ".join(k for k in s.grpo_cold_sizes if k != s.grpo_task)
    say(f"GRPO's cold start: SFT on {s.grpo_task} chats ({replayed} replayed) until {s.grpo_cold_target:.0%} of "
        f"{s.grpo_cold_dev} training-side {s.grpo_task} prompts are answered right → {run_dir}")
    model, tokenizer, _ = load_run(out / "sft")
    step, dev = train_until_accuracy(
        model, run_dir,
        lambda step: train_demo_stage("grpo_cold", run_dir, s, paths, sets, out / "sft", progress, stop_at_step=step),
        task_accuracy(tokenizer, dev_prompts, s.grpo_task, s.grpo_cold_dev, s.max_new_tokens),
        s.grpo_cold_every, s.grpo_cold_steps, s.grpo_cold_target,
        log=lambda step, acc: say(f"cold start, step {step}: {acc:.2f} of the {s.grpo_task} dev prompts right"))
    save_run(run_dir, model, load_run_config(run_dir), paths["tokenizer"])  # this step's model, wherever it stopped
    result = {"steps": step, "dev": dev}
    record.write_text(json.dumps(result) + "\n", encoding="utf-8")
    return result


def run_grpo_stage(out: Path, s: DemoSettings, paths: dict[str, Path], sft_scores: dict[str, tuple[int, int]],
                   progress: bool) -> dict[str, Any]:
    """A cold start from the SFT run (`cold_start`), then GRPO from it on s.grpo_task prompts with s.grpo_replay
    prompts beside them (rule rewards: the checked answer and the <think> format). Held-out accuracy of the task
    (its own held-out prompts, training and unseen phrasings) and of add2 for the SFT model, the cold start and GRPO."""
    from scratchlm.data.synth import build_synth
    from scratchlm.runs import load_run

    tasks = {s.grpo_task: (s.grpo_prompts, s.eval_per_task), **{k: (n, 0) for k, n in s.grpo_replay.items()}}
    files = build_synth(out / "data" / "grpo_synth", seed=s.seed, tasks=tasks)
    prompts = prepare_once("prompt", paths["tokenizer"], files["prompt_train"], out / "data" / "grpo_prompts")
    cold = cold_start(out, s, paths, files["prompt_train"], progress)
    run_dir = train_post_sft("grpo", out, s, {**paths, "grpo": prompts}, s.grpo_steps, s.grpo_sets,
                             f"GRPO: rewarding right {s.grpo_task} answers among the model's own samples", progress,
                             init="grpo_cold")
    scores = {}
    for name in ("sft", "grpo_cold", "grpo"):
        model, tokenizer, _ = load_run(out / name)
        task, _ = evaluate_tasks(model, tokenizer, files[f"prompt_{s.eval_split}"], s.eval_per_task, s.max_new_tokens,
                                 tasks={s.grpo_task})
        add2 = sft_scores if name == "sft" else evaluate_tasks(
            model, tokenizer, paths["prompt_eval"], s.eval_per_task, s.max_new_tokens, tasks={"add2"})[0]
        scores[name] = {**task, **{k: v for k, v in add2.items() if k.startswith("add2")}}
    return {"task": s.grpo_task, "reward_log": reward_trend(run_dir), "cold_start_steps": cold["steps"],
            "cold_start_dev": cold["dev"], "cold_start": before_after(scores["sft"], scores["grpo_cold"]),
            "tasks": before_after(scores["grpo_cold"], scores["grpo"])}


def reward_trend(run_dir: Path) -> list[float]:
    """Mean rollout reward of the first and the last tenth of a run's logged steps (metrics.jsonl)."""
    from scratchlm.runs import read_metrics

    rewards = [r["reward"] for r in read_metrics(run_dir) if "reward" in r]
    if not rewards:
        return []
    k = max(1, len(rewards) // 10)
    return [sum(rewards[:k]) / k, sum(rewards[-k:]) / k]
