"""GRPO in the one training loop: each step samples G completions per prompt with the policy itself (through the
serving engine), scores them with reward functions, normalises the rewards within each group into advantages,
and takes the clipped policy-gradient loss of train/rl_losses.py (grpo / dapo / dr_grpo / cispo aggregation,
k3 KL to the frozen --init-from model when rl.beta > 0).

A micro-batch is train.batch_size prompts × rl.num_generations completions as right-padded rows of prompt +
completion (the stop token kept: the model learns to stop), targets only on the completion. The log-probs of
the policy that sampled them (`old_logp`) are taken once, under no_grad, right after sampling; with one
optimisation pass per rollout (rl.num_iterations=1, the default) the ratio is 1 and the loss is the plain policy
gradient; with μ > 1 passes the same batch is taken again and the ratio departs from 1. Rollouts are seeded by
(train.seed, position), so a resumed run samples what the uninterrupted one did. Sampling, scoring, the rows and
the μ passes are train/rollout.py's, shared with PPO.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scratchlm.config import Config
from scratchlm.train.batches import IGNORE, Batch
from scratchlm.train.objectives import token_logprobs
from scratchlm.train.rule_rewards import parse_rewards
from scratchlm.train.rl_losses import group_advantages, policy_loss, zero_variance_groups
from scratchlm.train.rollout import RolloutObjective, rows_batch


class GRPO(RolloutObjective):
    """Group relative policy optimisation on `scratchlm prepare --kind prompt` shards (answers in the side file)."""

    name = "grpo"

    def __init__(self, cfg: Config, shards: Any = None, tokenizer: Any = None, reference: nn.Module | None = None) -> None:
        super().__init__(cfg, shards, tokenizer, reference)
        self.rewards = parse_rewards(cfg.rl.reward_funcs, cfg.rl.reward_weights)
        self.check_rewards_apply(self.rewards)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """LoRA when configured; the tokenizer and (with rl.beta > 0) the reference come from the --init-from run."""
        self._load_init(need_reference=self.cfg.rl.beta > 0)
        return super().prepare_model(model)

    @torch.no_grad()
    def rollout(self, indices: list[int], seed: int) -> Batch:
        """G completions for each prompt, scored and turned into one training batch (see the module doc)."""
        rl, G = self.cfg.rl, self.cfg.rl.num_generations
        s = self.sample(self.policy, indices, seed)
        total, stats = self.score(self.rewards, s)
        flat = group_advantages(total, G, rl.scale_rewards)
        dead = zero_variance_groups(total, G)
        stats.update({"reward": float(total.mean()), "reward_std": float(total.std()),
                      "frac_reward_zero_std": float(dead.float().mean()),
                      "completion_length": float(sum(len(c) for c in s.completions) / len(s.completions))})
        keep = [i for i in range(len(s.completions)) if not (rl.dynamic_sampling and bool(dead[i // G]))]
        if not keep:  # every group carried no signal: one row with zero advantage keeps the step well-defined
            keep = [0]
            flat = torch.zeros_like(flat)
        rows = [([int(t) for t in s.prompts[i // G].ids], s.completions[i]) for i in keep]
        batch = rows_batch(rows, self.cfg.model.max_seq_len)
        batch["advantages"] = flat[keep]
        batch["old_logp"] = self.logprobs(self.policy, batch)
        if self.reference is not None:
            batch["ref_logp"] = self.logprobs(self.reference, batch)
        batch["stats"] = stats  # plain floats: the loop leaves them on the host
        return batch

    # -- the loss -------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The clipped policy loss over completion tokens (+ β·KL); rollout statistics as metrics."""
        rl = self.cfg.rl
        x, y = batch["input_ids"], batch["targets"]
        logp = token_logprobs(model, x, y)  # [B, T], through forward: the model may be DDP / FSDP wrapped
        mask = y != IGNORE
        out = policy_loss(logp, batch["old_logp"], batch["advantages"], mask, rl.eps_low, rl.eps_high, rl.loss_agg,
                          batch.get("ref_logp"), rl.beta, max_len=self.max_completion_tokens())
        n = mask.sum().clamp(min=1)
        metrics = {**batch["stats"], "clip_fraction": out.clip_fraction, "kl": out.kl,
                   "entropy": float(-(logp.detach() * mask).sum() / n)}  # sampled-token estimate of −E[log π]
        return out.loss, metrics

    def max_completion_tokens(self) -> int:
        """The most tokens one row's completion may hold (dr_grpo's constant normaliser)."""
        return self.cfg.rl.max_new_tokens

    def weight(self, batch: Batch) -> float:
        return float(batch["input_ids"].shape[0])
