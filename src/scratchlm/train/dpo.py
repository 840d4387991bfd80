"""The DPO objective (and its IPO / cDPO / SimPO variants) in the one training loop.

A batch holds B preference pairs as 2B right-padded rows (chosen rows first, then rejected), each target
counted only on the assistant's reply (the shards' mask). The policy's summed completion log-probs come from
`Transformer.token_logprobs` through the model's forward (objectives.token_logprobs: the loop may hand a DDP / FSDP
wrapped model); the frozen reference (the --init-from run, loaded once, eval mode, no grad)
scores the same rows under torch.no_grad(). SimPO is reference-free: no reference model is loaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from scratchlm.config import Config, ConfigError
from scratchlm.padding import right_pad
from scratchlm.train.batches import IGNORE, Batch
from scratchlm.train.objectives import PairObjective, token_logprobs
from scratchlm.train.preference import preference_loss, reward_metrics


def pair_batch(shards: Any, indices: list[int], seq_len: int) -> Batch:
    """Pairs `indices` of a preference dataset as input_ids/targets [2B, T] (chosen rows, then rejected)."""
    rows = []
    for i in indices:
        p = shards.pair(int(i))
        rows.append((p.chosen, p.chosen_mask))
    for i in indices:
        p = shards.pair(int(i))
        rows.append((p.rejected, p.rejected_mask))
    T = min(seq_len, max(len(ids) for ids, _ in rows) - 1)
    xs, ys = [], []
    for ids, mask in rows:
        ids, mask = np.asarray(ids[: T + 1], dtype=np.int64), np.asarray(mask[: T + 1])
        xs.append(ids[:-1])
        ys.append(np.where(mask[1:] > 0, ids[1:], IGNORE))  # the mask marks tokens to predict: it shifts with y
    x, _ = right_pad(xs, 0, T)  # the pad id is irrelevant: padded targets are ignored
    y, _ = right_pad(ys, IGNORE, T)
    return {"input_ids": x, "targets": y}


class DPO(PairObjective):
    """Direct preference optimisation against a frozen reference (train.objective=dpo, the [pref] section)."""

    name = "dpo"

    def __init__(self, cfg: Config, shards: Any = None, val_shards: Any = None, reference: nn.Module | None = None) -> None:
        super().__init__(cfg, shards, val_shards)
        self.reference = reference

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """LoRA when configured; the reference is the init run's model, frozen (none for SimPO)."""
        if self.cfg.pref.loss_type != "simpo" and self.reference is None:
            from scratchlm.runs import load_run

            if not self.cfg.train.init_from:
                raise ConfigError("DPO needs a reference model: pass --init-from SFT_RUN (or use pref.loss_type=simpo)")
            self.reference, _, _ = load_run(self.cfg.train.init_from)
        if self.reference is not None:
            self.reference.eval().requires_grad_(False)
        return super().prepare_model(model)

    def frozen_models(self) -> list[nn.Module]:
        return [self.reference] if self.reference is not None else []

    def build(self, shards: Any, indices: list[int]) -> Batch:
        return pair_batch(shards, indices, self.cfg.train.seq_len)

    def _loss(self, model: nn.Module, batch: Batch) -> Any:
        pc = self.cfg.pref
        x, y = batch["input_ids"], batch["targets"]
        B = x.shape[0] // 2
        logps = token_logprobs(model, x, y).sum(-1)  # [2B]
        lens = (y != IGNORE).sum(-1).clamp(min=1).to(logps.dtype)
        ref = (None, None)
        if self.reference is not None:
            with torch.no_grad():
                r = token_logprobs(self.reference, x, y).sum(-1)
            ref = (r[:B], r[B:])
        return preference_loss(logps[:B], logps[B:], ref[0], ref[1], lens[:B], lens[B:], pc.beta, pc.loss_type,
                               pc.label_smoothing, pc.simpo_gamma, pc.rpo_alpha)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean preference loss over the micro-batch's pairs, with TRL's reward metrics."""
        out = self._loss(model, batch)
        return out.losses.mean(), reward_metrics(out)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: Batch) -> tuple[float, int, dict[str, float]]:
        """(summed preference loss, number of pairs, summed implicit-reward accuracy and margin) on one
        validation batch: logged as val_loss, val_accuracy, val_margin."""
        out = self._loss(model, batch)
        d = out.chosen_rewards - out.rejected_rewards
        return float(out.losses.sum()), int(out.losses.numel()), {"accuracy": float((d > 0).sum()),
                                                                    "margin": float(d.sum())}
