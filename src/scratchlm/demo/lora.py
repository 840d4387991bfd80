"""The demo's LoRA stage: adapters over the SFT run teach it a new name (MiniMind's lora_identity idea)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.demo.common import accuracy, check_stage_steps, say, train_demo_stage
from scratchlm.demo.settings import DemoSettings, post_sft_sets
from scratchlm.eval.tasks import UNSEEN, evaluate_tasks


def run_lora_stage(out: Path, s: DemoSettings, paths: dict[str, Path], sft_scores: dict[str, tuple[int, int]],
                   progress: bool) -> dict[str, Any]:
    """Identity LoRA over the SFT run (new name s.lora_name, add2 chats replayed); held-out identity with the new
    name, and held-out add2 before (the SFT model) and after."""
    from scratchlm.shards.prepare import prepare
    from scratchlm.data.synth import build_synth
    from scratchlm.runs import load_run

    run_dir = out / "lora"
    check_stage_steps(run_dir, s.lora_steps)
    files = build_synth(out / "data" / "lora_synth", seed=s.seed, name=s.lora_name, tasks=dict(s.lora_sizes))
    prepare("sft", paths["tokenizer"], [files["sft_train"]], out / "data" / "lora_sft", dedup=False)
    if not any(run_dir.glob("adapter_model.safetensors")):
        say(f"LoRA: teaching the SFT model the name {s.lora_name!r} for {s.lora_steps} steps → {run_dir}")
        paths = {**paths, "lora": out / "data" / "lora_sft"}
        train_demo_stage("lora", run_dir, s, paths, post_sft_sets(s, s.lora_steps, s.lora_sets), out / "sft", progress)
    model, tokenizer, _ = load_run(run_dir)
    new, _ = evaluate_tasks(model, tokenizer, files[f"prompt_{s.eval_split}"], s.eval_per_task, s.max_new_tokens, tasks={"identity"})
    old, _ = evaluate_tasks(model, tokenizer, paths["prompt_eval"], s.eval_per_task, s.max_new_tokens, tasks={"add2"})
    return {"name": s.lora_name, "identity_new_name": accuracy(new["identity"]),
            "add2_before": accuracy(sft_scores["add2"]), "add2_after": accuracy(old["add2"]),
            "add2_unseen_before": accuracy(sft_scores.get("add2" + UNSEEN, (0, 0))),
            "add2_unseen_after": accuracy(old.get("add2" + UNSEEN, (0, 0)))}
