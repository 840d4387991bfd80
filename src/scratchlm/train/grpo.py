"""GRPO in the one training loop: each step samples G completions per prompt with the policy itself (through the
serving engine), scores them with reward functions, normalises the rewards within each group into advantages,
and takes the clipped policy-gradient loss of train/rl_losses.py (grpo / dapo / dr_grpo / cispo aggregation,
k3 KL to the frozen --init-from model when rl.beta > 0).

A micro-batch is train.batch_size prompts × rl.num_generations completions as right-padded rows of prompt +
completion (the stop token kept: the model learns to stop), targets only on the completion. The log-probs of
the policy that sampled them (`old_logp`) are taken once, under no_grad, right after sampling; with one
optimisation pass per rollout (the default) the ratio is 1 and the loss is the plain policy gradient. Rollouts
are seeded by (train.seed, position), so a resumed run samples what the uninterrupted one did.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from scratchlm.config import Config, ConfigError
from scratchlm.train.objectives import IGNORE, Batch, Objective, _epoch_order, _open
from scratchlm.train.rewards import parse_rewards
from scratchlm.train.rl_losses import group_advantages, policy_loss, zero_variance_groups


class GRPO(Objective):
    """Group relative policy optimisation on `scratchlm prepare --kind prompt` shards (answers in the side file)."""

    name = "grpo"
    val_is_nll = False

    def __init__(self, cfg: Config, shards: Any = None, tokenizer: Any = None, reference: nn.Module | None = None) -> None:
        super().__init__(cfg)
        self.shards = shards if shards is not None else _open(cfg.train.data, "train.data")
        kind = getattr(self.shards, "kind", "prompt")
        if kind != "prompt":
            raise ConfigError(f"train.data={cfg.train.data!r} holds {kind!r} shards; grpo needs "
                              "`scratchlm prepare --kind prompt` (prompts with checkable answers)")
        self.rewards = parse_rewards(cfg.rl.reward_funcs, cfg.rl.reward_weights)
        self.tokenizer = tokenizer
        self.reference = reference
        self.position = 0  # prompts consumed, counted over all processes
        self._perm: tuple[int, np.ndarray] = (-1, np.arange(0))
        self._engine: Any = None  # the rollout engine over self.policy, built on the first rollout

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """LoRA when configured; the tokenizer and (with rl.beta > 0) the reference come from the --init-from run."""
        init = self.cfg.train.init_from
        if self.tokenizer is None:
            from scratchlm.tokenizer import Tokenizer

            if not init:
                raise ConfigError("grpo decodes completions for its rewards: pass --init-from RUN (with tokenizer.json)")
            self.tokenizer = Tokenizer.load(init)
        if self.cfg.rl.beta > 0 and self.reference is None:
            from scratchlm.run import load_run

            self.reference, _, _ = load_run(init)
        if self.reference is not None:
            self.reference.eval().requires_grad_(False)
        return super().prepare_model(model)

    def frozen_models(self) -> list[nn.Module]:
        return [self.reference] if self.reference is not None else []

    # -- rollouts -------------------------------------------------------------------------------------
    def _prompt_at(self, pos: int) -> int:
        n = self.shards.n_docs
        epoch, i = divmod(pos, n)
        if self._perm[0] != epoch:
            self._perm = (epoch, _epoch_order(n, self.cfg.train.seed, epoch, True))
        return int(self._perm[1][i])

    @torch.no_grad()
    def rollout(self, indices: list[int], seed: int) -> Batch:
        """G completions for each prompt, scored and turned into one training batch (see the module doc)."""
        from scratchlm.engine import LLMEngine
        from scratchlm.generate import SamplingParams

        rl, G = self.cfg.rl, self.cfg.rl.num_generations
        policy = self.policy
        was_training = policy.training
        policy.eval()
        prompts = [self.shards.prompt(i) for i in indices]
        if self._engine is None:
            # One engine (and KV pool) for the whole run. The weights change every step, so no computed block may
            # be reused by a later rollout: without prefix caching a freed block is never looked up again.
            self._engine = LLMEngine(policy, self.tokenizer, prefix_caching=False, max_num_seqs=len(prompts) * G,
                                     max_waiting=len(prompts))
        engine = self._engine
        params = [SamplingParams(temperature=rl.temperature, top_p=rl.top_p, max_new_tokens=rl.max_new_tokens,
                                 keep_stop_id=True, seed=seed + k * G) for k in range(len(prompts))]
        handles = [engine.submit([int(t) for t in p.ids], sp, n=G) for p, sp in zip(prompts, params)]
        while not all(h.finished for h in handles):
            engine.step()
        policy.train(was_training)
        completions = [ids for h in handles for ids in h.token_ids]  # [N·G] lists, stop id kept when it stopped
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in completions]
        columns = {"answer": [p.answer for p in prompts for _ in range(G)],
                   "task": [p.columns.get("task", "") for p in prompts for _ in range(G)]}
        total = torch.zeros(len(texts))
        stats: dict[str, float] = {}
        for name, fn, w in self.rewards:
            r = torch.tensor(fn([None] * len(texts), texts, completion_ids=completions,
                                max_new_tokens=rl.max_new_tokens, **columns), dtype=torch.float32)
            total += w * r
            stats[f"rewards/{name}/mean"], stats[f"rewards/{name}/std"] = float(r.mean()), float(r.std())
        flat = group_advantages(total, G, rl.scale_rewards)
        dead = zero_variance_groups(total, G)
        stats.update({"reward": float(total.mean()), "reward_std": float(total.std()),
                      "frac_reward_zero_std": float(dead.float().mean()),
                      "completion_length": float(np.mean([len(c) for c in completions]))})
        if "answer" in [n for n, _, _ in self.rewards]:
            stats["accuracy"] = stats["rewards/answer/mean"]
        keep = [i for i in range(len(completions)) if not (rl.dynamic_sampling and bool(dead[i // G]))]
        if not keep:  # every group carried no signal: one row with zero advantage keeps the step well-defined
            keep = [0]
            flat = torch.zeros_like(flat)
        rows = [([int(t) for t in prompts[i // G].ids], completions[i]) for i in keep]
        batch = _rows_batch(rows, self.cfg.model.max_seq_len)
        batch["advantages"] = flat[keep]
        batch["old_logp"] = policy.token_logprobs(batch["input_ids"].to(_device(policy)),
                                                  batch["targets"].to(_device(policy))).cpu()
        if self.reference is not None:
            batch["ref_logp"] = self.reference.token_logprobs(batch["input_ids"].to(_device(self.reference)),
                                                              batch["targets"].to(_device(self.reference))).cpu()
        batch["stats"] = stats  # plain floats: the loop leaves them on the host
        return batch

    def next_batches(self) -> list[Batch]:
        tc, world, rank = self.cfg.train, self.info.world_size, self.info.rank
        N, out = tc.batch_size, []
        for m in range(tc.grad_accum):
            first = self.position + (m * world + rank) * N
            out.append(self.rollout([self._prompt_at(p) for p in range(first, first + N)],
                                    seed=tc.seed * 1_000_003 + first * self.cfg.rl.num_generations))
        self.position += N * tc.grad_accum * world
        return out

    # -- the loss -------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The clipped policy loss over completion tokens (+ β·KL); rollout statistics as metrics."""
        rl = self.cfg.rl
        x, y = batch["input_ids"], batch["targets"]
        logp = model.token_logprobs(x, y)  # [B, T]
        mask = y != IGNORE
        out = policy_loss(logp, batch["old_logp"], batch["advantages"], mask, rl.eps_low, rl.eps_high, rl.loss_agg,
                          batch.get("ref_logp"), rl.beta, max_len=rl.max_new_tokens)
        n = mask.sum().clamp(min=1)
        metrics = {**batch["stats"], "clip_fraction": out.clip_fraction, "kl": out.kl,
                   "entropy": float(-(logp.detach() * mask).sum() / n)}  # sampled-token estimate of −E[log π]
        return out.loss, metrics

    def weight(self, batch: Batch) -> float:
        return float(batch["input_ids"].shape[0])

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _rows_batch(rows: list[tuple[list[int], list[int]]], max_len: int) -> Batch:
    """(prompt ids, completion ids) rows → input_ids/targets [B, T], right-padded, targets on the completion only."""
    seqs = [(p + c)[:max_len] for p, c in rows]
    T = max(len(s) for s in seqs) - 1
    x = np.zeros((len(seqs), T), dtype=np.int64)
    y = np.full((len(seqs), T), IGNORE, dtype=np.int64)
    for r, ((p, _), s) in enumerate(zip(rows, seqs)):
        n = len(s) - 1
        x[r, :n] = s[:-1]
        y[r, len(p) - 1:n] = s[len(p):]  # position t predicts token t+1: the completion starts after the prompt
    return {"input_ids": torch.from_numpy(x), "targets": torch.from_numpy(y)}
