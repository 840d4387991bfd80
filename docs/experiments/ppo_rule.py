"""PPO with the rule reward in place of the demo's GRPO stage, on the same rollouts:

    python ppo_rule.py SRC OUT SEED COLD_FROM

The GRPO stage of stage_var.py (from COLD_FROM's cold start) with its training step done by the ppo objective
(critic at 30x the lr, per-token KL 0.04)."""
import sys
from pathlib import Path

import scratchlm.demo.grpo as grpo
from scratchlm.demo.common import train_demo_stage
from scratchlm.demo.settings import post_sft_sets
from stage_var import run_variant

_train_post_sft = grpo.train_post_sft


def as_ppo(stage, out, s, paths, steps, sets, what, progress, init="sft"):
    """demo.common.train_post_sft, but the grpo stage trains with the ppo objective on the grpo prompts."""
    if stage != "grpo":
        return _train_post_sft(stage, out, s, paths, steps, sets, what, progress, init)
    run_dir = out / "grpo"
    if not (run_dir / "model.safetensors").exists():
        train_demo_stage("ppo", run_dir, s, {**paths, "ppo": paths["grpo"]},
                         post_sft_sets(s, steps, [*sets, "rl.kl_coef=0.04", "rl.critic_lr_scale=30"]),
                         out / init, progress)
    return run_dir


if __name__ == "__main__":
    grpo.train_post_sft = as_ppo  # run_grpo_stage looks it up in its module (demo/grpo.py) at call time
    src, out, seed, cold = sys.argv[1:5]
    print(run_variant("grpo", Path(src), Path(out), int(seed), [], Path(cold)))
