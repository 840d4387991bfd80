"""The reward-model objective (train.objective=reward): the model (model/reward.py's RewardModel, the trunk with a
scalar head on the last real token) trained on preference pairs with −log σ(r_chosen − r_rejected − margin)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from scratchlm.config import ConfigError
from scratchlm.model.reward import RewardModel
from scratchlm.padding import right_pad
from scratchlm.train.batches import Batch
from scratchlm.train.objectives import PairObjective
from scratchlm.train.preference import pairwise_reward_loss


def reward_batch(shards: Any, indices: Sequence[int], seq_len: int) -> Batch:
    """Pairs as whole sequences, right-padded: input_ids [2B, T] (chosen rows, then rejected) and lengths [2B]."""
    seqs = [shards.pair(int(i)).chosen for i in indices] + [shards.pair(int(i)).rejected for i in indices]
    ids, lengths = right_pad([s[-seq_len:] for s in seqs])  # keep the ends: the score reads the last token
    return {"input_ids": ids, "lengths": lengths}


class Reward(PairObjective):
    """Pairwise reward-model training (train.objective=reward): the model is wrapped in a RewardModel."""

    name = "reward"

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The SFT model gets its score head; the whole model trains (an adapter run would not hold the head)."""
        if self.cfg.lora.rank > 0:
            raise ConfigError("the reward model trains the whole model and its score head: set lora.rank=0")
        return RewardModel(model)

    def build(self, shards: Any, indices: list[int]) -> Batch:
        return reward_batch(shards, indices, self.cfg.train.seq_len)

    def _scores(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        r = model(batch["input_ids"], batch["lengths"])
        B = r.shape[0] // 2
        return r[:B], r[B:]

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean pairwise loss; pair accuracy and mean margin as metrics."""
        rc, rr = self._scores(model, batch)
        losses = pairwise_reward_loss(rc, rr, self.cfg.pref.reward_margin)
        d = (rc - rr).detach()
        return losses.mean(), {"accuracy": float((d > 0).float().mean()), "margin": float(d.mean())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: Batch) -> tuple[float, int, dict[str, float]]:
        """(summed pairwise loss, number of pairs, summed pair accuracy and margin) on one validation batch."""
        rc, rr = self._scores(model, batch)
        d = rc - rr
        return (float(pairwise_reward_loss(rc, rr, self.cfg.pref.reward_margin).sum()), int(rc.numel()),
                {"accuracy": float((d > 0).sum()), "margin": float(d.sum())})

    def tokens(self, batch: Batch) -> int:
        return int(batch["lengths"].sum())
