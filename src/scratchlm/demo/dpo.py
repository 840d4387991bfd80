"""The demo's DPO stage: preference optimisation from the SFT run (RPO's NLL term keeps the right answers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.demo.common import before_after, train_post_sft
from scratchlm.demo.settings import DemoSettings
from scratchlm.eval.tasks import evaluate_tasks


def run_dpo_stage(out: Path, s: DemoSettings, paths: dict[str, Path], sft_scores: dict[str, tuple[int, int]],
                  progress: bool) -> dict[str, Any]:
    """DPO from the SFT run (its own frozen reference) on the preference pairs: held-out implicit-reward accuracy
    (0 for the SFT model itself: policy = reference), how often the model's own log-probs prefer the chosen
    reply before and after, and held-out task accuracy before and after."""
    from scratchlm.shards.datasets import open_shards
    from scratchlm.eval.preference import logprob_preference, preference_accuracy
    from scratchlm.runs import load_run

    run_dir = train_post_sft("dpo", out, s, paths, s.dpo_steps, s.dpo_sets,
                             "DPO: preferring right replies over wrong ones", progress)
    held = open_shards(paths["pref_eval"])
    sft, _, _ = load_run(out / "sft")
    policy, tokenizer, cfg = load_run(run_dir)
    seq = cfg.train.seq_len
    implicit = preference_accuracy(policy, sft, held, cfg, max_pairs=s.eval_pairs)
    own_before = logprob_preference(sft, held, seq, max_pairs=s.eval_pairs)
    own_after = logprob_preference(policy, held, seq, max_pairs=s.eval_pairs)
    tasks = {t for t in s.pref_sizes if t in sft_scores}
    scores, _ = evaluate_tasks(policy, tokenizer, paths["prompt_eval"], s.eval_per_task, s.max_new_tokens, tasks=tasks)
    return {"pairs": min(held.n_pairs, s.eval_pairs), "implicit_accuracy": implicit["accuracy"],
            "implicit_margin": implicit["margin"], "logp_accuracy_before": own_before["accuracy"],
            "logp_accuracy_after": own_after["accuracy"],
            "tasks": before_after(sft_scores, scores)}
