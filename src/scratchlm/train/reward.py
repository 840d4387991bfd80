"""The reward model: the transformer's trunk with a scalar head on the last real token, trained on preference
pairs with −log σ(r_chosen − r_rejected − margin); a run folder that `load_run` opens as a RewardModel and
that scores (prompt, completion) batches for PPO and best-of-N."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from scratchlm.config import ConfigError
from scratchlm.train.objectives import Batch, PairObjective
from scratchlm.train.preference import pairwise_reward_loss


class RewardModel(nn.Module):
    """Transformer trunk (`lm`, initialised from an SFT run) + final norm + a linear [D → 1] score head."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self.config = lm.config
        self.head = nn.Linear(lm.config.d_model, 1, bias=False, device=lm.embed.weight.device)
        nn.init.normal_(self.head.weight, std=1.0 / (lm.config.d_model + 1) ** 0.5)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores [B] of right-padded rows input_ids [B, T], read at each row's last real token (lengths [B])."""
        x, _ = self.lm.hidden_states(input_ids)  # [B, T, D]; causal, so right padding never reaches a real token
        last = x[torch.arange(x.shape[0], device=x.device), lengths.to(x.device) - 1]  # [B, D]
        return self.head(self.lm.norm(last)).squeeze(-1).float()


def right_padded(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id sequences as right-padded rows input_ids [B, T] (0 after each end) and their lengths [B]."""
    T = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), T), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
    return ids, torch.tensor([len(s) for s in seqs])


def reward_batch(shards: Any, indices: Sequence[int], seq_len: int) -> Batch:
    """Pairs as whole sequences, right-padded: input_ids [2B, T] (chosen rows, then rejected) and lengths [2B]."""
    seqs = [shards.pair(int(i)).chosen for i in indices] + [shards.pair(int(i)).rejected for i in indices]
    ids, lengths = right_padded([s[-seq_len:] for s in seqs])  # keep the ends: the score reads the last token
    return {"input_ids": ids, "lengths": lengths}


@torch.no_grad()
def score_ids(model: RewardModel, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    """Scores [N] (on the host) of token-id sequences, each cut to its last max_seq_len tokens (the score reads the
    end): one right-padded forward."""
    cap = int(model.config.max_seq_len)
    ids, lengths = right_padded([list(s)[-cap:] for s in seqs])
    return model(ids.to(next(model.parameters()).device), lengths).cpu()


def score_texts(model: RewardModel, tokenizer: Any, prompts: Sequence[list[dict]], completions: Sequence[str],
                batch: int = 16) -> list[float]:
    """Reward of each (prompt messages, assistant completion), as the chat template encodes the conversation."""
    out: list[float] = []
    for i in range(0, len(prompts), batch):
        seqs = [tokenizer.encode_chat(list(p) + [{"role": "assistant", "content": c}])[0]
                for p, c in zip(prompts[i:i + batch], completions[i:i + batch])]
        out += score_ids(model, seqs).tolist()
    return out


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
