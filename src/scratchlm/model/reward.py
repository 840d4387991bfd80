"""The reward model: the transformer's trunk with a scalar head on the last real token; a run folder that
`load_run` opens as a RewardModel and that scores (prompt, completion) batches for PPO, best-of-N and win rates.
Its training objective is train/reward_objective.py."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from scratchlm.padding import right_pad


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


@torch.no_grad()
def score_ids(model: RewardModel, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    """Scores [N] (on the host) of token-id sequences, each cut to its last max_seq_len tokens (the score reads the
    end): one right-padded forward."""
    cap = int(model.config.max_seq_len)
    ids, lengths = right_pad([list(s)[-cap:] for s in seqs])
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
