"""PPO with the rule reward in place of the demo's GRPO stage, same rollouts: python ppo_rule.py SRC SEED COLD_FROM.
Runs demo.run_grpo_stage with its training step swapped for the ppo objective (critic 30x lr, KL 0.04 per token)."""
import sys
from pathlib import Path

import scratchlm.demo as demo

orig = demo._train_post_sft


def as_ppo(stage, out, s, paths, steps, sets, what, progress, init="sft"):
    if stage != "grpo":
        return orig(stage, out, s, paths, steps, sets, what, progress, init)
    run_dir = out / "grpo"
    if not (run_dir / "model.safetensors").exists():
        demo._train_stage("ppo", run_dir, s, {**paths, "ppo": paths["grpo"]},
                          demo.post_sft_sets(s, steps, [*sets, "rl.kl_coef=0.04", "rl.critic_lr_scale=30"]),
                          out / init, progress)
    return run_dir


demo._train_post_sft = as_ppo
src, seed, cold = sys.argv[1], sys.argv[2], sys.argv[3]
sys.argv = ["grpo_var.py", src, "ppo_rule", seed, cold]
exec((Path(__file__).parent / "grpo_var.py").read_text())
