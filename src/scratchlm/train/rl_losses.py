"""The maths of RL on sampled completions, hand-written on small tensors: group-normalised advantages (GRPO),
the k3 KL estimator, and the clipped policy loss with its aggregation variants.

Shapes: G completions per prompt, N prompts, B = N·G rows; per-token tensors are [B, T] with a mask [B, T]
(1 on the completion's tokens, the stop token included, 0 on padding).

Aggregations of the per-token loss ℓ (`agg`):
- "grpo" — each sequence's mean over its tokens, then the mean over sequences (the GRPO paper: a long answer's
  tokens count less each, which Dr. GRPO shows biases towards long wrong answers);
- "dapo" — the sum over every token of the batch / the number of tokens (DAPO: every token counts the same);
- "dr_grpo" — the sum over every token / (B · max_len), a constant normaliser (Dr. GRPO);
- "cispo" — CISPO (MiniMax-M1): the importance weight min(r, 1 + ε_high), detached, times A · log π, aggregated
  token-level like DAPO; no token is ever dropped from the gradient, only its weight is capped.
The clipped objective uses separate ε_low / ε_high (DAPO's clip-higher): ℓ = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A)
with r = exp(log π − log π_old).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

AGGREGATIONS = ("grpo", "dapo", "dr_grpo", "cispo")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Advantages [B] of rewards [B] (G consecutive rows per prompt): reward − its group's mean, divided by the
    group's (unbiased) std when `scale` (GRPO; Dr. GRPO turns scaling off)."""
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"group_advantages: rewards shape {tuple(rewards.shape)} is not [N·{group_size}]")
    r = rewards.float().view(-1, group_size)  # [N, G]
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (r.std(dim=1, keepdim=True) + eps) if group_size > 1 else adv
    return adv.reshape(-1)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] bool: groups whose rewards are all equal (their advantages are 0: no signal; DAPO drops them)."""
    r = rewards.view(-1, group_size)
    return (r == r[:, :1]).all(dim=1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π ‖ π_ref) estimate k3 = exp(ref − logp) − (ref − logp) − 1 (≥ 0, unbiased under π)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


class PolicyLoss(NamedTuple):
    """The scalar loss and what TRL logs beside it (plain floats)."""

    loss: torch.Tensor
    clip_fraction: float  # share of completion tokens whose ratio was clipped (where it mattered)
    kl: float  # mean k3 KL per completion token (0 without a reference)


def _aggregate(per_token: torch.Tensor, mask: torch.Tensor, agg: str, max_len: int) -> torch.Tensor:
    if agg == "grpo":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if agg in ("dapo", "cispo"):
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    return (per_token * mask).sum() / (per_token.shape[0] * max_len)  # dr_grpo


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                eps_low: float = 0.2, eps_high: float = 0.2, agg: str = "grpo", ref_logp: torch.Tensor | None = None,
                beta: float = 0.0, max_len: int | None = None) -> PolicyLoss:
    """Clipped surrogate (or CISPO) loss over completion tokens, + β·k3 KL to the reference, aggregated by `agg`.

    logp / old_logp / ref_logp: [B, T] log-probs of the sampled tokens under the policy (with grad), the policy
    that sampled them and the reference; advantages [B] (per sequence) or [B, T] (per token); mask [B, T];
    max_len: dr_grpo's constant (default T)."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"policy_loss: agg={agg!r}; choose one of {', '.join(AGGREGATIONS)}")
    mask = mask.to(logp.dtype)
    A = advantages.to(logp.dtype)
    A = A[:, None] if A.dim() == 1 else A  # [B, 1]: one per sequence (GRPO), or [B, T]: one per token (PPO's GAE)
    ratio = torch.exp(logp - old_logp.detach())
    if agg == "cispo":
        weight = ratio.clamp(max=1 + eps_high).detach()
        per_token = -weight * A * logp
        clipped = ratio > 1 + eps_high
    else:
        unclipped = ratio * A
        bounded = ratio.clamp(1 - eps_low, 1 + eps_high) * A
        per_token = -torch.minimum(unclipped, bounded)
        clipped = bounded < unclipped  # the bound is the one taken: no gradient through this token's ratio
    # Equivalent mutants: without a reference this zero is only read as float(kl), so its dtype and device never show.
    kl = torch.zeros((), dtype=logp.dtype, device=logp.device)  # pragma: no mutate
    if ref_logp is not None:
        kl_tok = k3_kl(logp, ref_logp.detach())
        kl = (kl_tok * mask).sum() / mask.sum().clamp(min=1)
        if beta:
            per_token = per_token + beta * kl_tok
    loss = _aggregate(per_token, mask, agg, max_len or logp.shape[1])
    n = float(mask.sum().clamp(min=1))
    return PolicyLoss(loss, float((clipped.to(mask.dtype) * mask).sum()) / n, float(kl.detach()))


# -- PPO (RLHF): per-token rewards, GAE, whitening, the clipped value loss ---------------------------------------


def kl_shaped_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """InstructGPT's per-token rewards [B, T]: −β·(log π_old − log π_ref) at every completion token, plus the
    sequence's score [B] (reward model or rule) at its last token."""
    mask = mask.to(logp.dtype)
    r = -beta * (logp - ref_logp) * mask
    last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & (mask > 0)  # [B, T]: the final completion token
    return r + last.to(r.dtype) * score.to(r.dtype)[:, None]


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's completion tokens (mask [B, T], contiguous per row):
    δ_t = r_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}, with V and A zero after the last token.
    Returns (advantages, returns = advantages + values), both zero outside the mask."""
    mask = mask.to(values.dtype)
    B, T = values.shape
    adv = torch.zeros_like(values)
    next_v = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_a = torch.zeros(B, dtype=values.dtype, device=values.device)
    for t in range(T - 1, -1, -1):  # backwards: each step needs the one after it
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        a = delta + gamma * lam * next_a
        adv[:, t] = a * m
        next_v = torch.where(m > 0, values[:, t], next_v * 0)
        next_a = torch.where(m > 0, a, next_a * 0)
    return adv, (adv + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x normalised to mean 0, std 1 over the masked entries (zero elsewhere)."""
    m = mask.to(x.dtype)
    n = m.sum().clamp(min=1)
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * m


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> torch.Tensor:
    """PPO's clipped value loss: ½·max((V − R)², (clip(V, V_old ± clip) − R)²), mean over masked tokens."""
    m = mask.to(values.dtype)
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return (loss * m).sum() / m.sum().clamp(min=1)
