"""Preference losses, hand-written on sequence log-probabilities: DPO and its variants, the reward model's
pairwise loss.

Inputs are per-sequence sums of the completion's token log-probs (from `Transformer.token_logprobs`), one
value per pair, for the policy and (where the variant has one) the frozen reference model:
- "sigmoid" — DPO (Rafailov et al. 2023): −log σ(β·[(π_c − ref_c) − (π_r − ref_r)]); with label smoothing ε
  it is conservative DPO (cDPO), which assumes a fraction ε of the labels are flipped.
- "ipo" — IPO (Azar et al. 2023): ([(π_c − ref_c) − (π_r − ref_r)] − 1/(2β))² on per-token *average*
  log-probs, a squared loss that does not push the margin to infinity on deterministic preferences.
- "simpo" — SimPO (Meng et al. 2024), the reference-free variant chosen here: −log σ(β·(avg π_c − avg π_r) − γ)
  on length-normalised log-probs. No reference model is held or run (half the memory and forward passes of
  DPO), and the length normalisation keeps it from preferring longer answers; ORPO, the other candidate, adds
  an SFT term to the same batch and is closer to SFT than to preference learning.
Any variant may add `rpo_alpha` × the chosen completion's per-token NLL (RPO, Pang et al. 2024; TRL's
`rpo_alpha`): DPO lowers the likelihood of chosen and rejected replies alike, and on the demo's arithmetic pairs
(same working, another final number) that alone wrecked the task it was meant to sharpen.
The implicit rewards that TRL logs (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies)
are β·(π − ref) for DPO/IPO and β·avg π for SimPO.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "simpo")


class PreferenceLoss(NamedTuple):
    """Per-pair losses [B] and the implicit rewards of the chosen and rejected completions [B]."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    rpo_alpha: float = 0.0,
) -> PreferenceLoss:
    """DPO / cDPO / IPO / SimPO (+ RPO's NLL term) from summed completion log-probs [B] and completion lengths [B]
    (tokens)."""
    out = _preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_len, rejected_len,
                           beta, loss_type, label_smoothing, simpo_gamma)
    if rpo_alpha:
        return out._replace(losses=out.losses + rpo_alpha * (-policy_chosen / chosen_len))
    return out


def _preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor | None,
                     ref_rejected: torch.Tensor | None, chosen_len: torch.Tensor, rejected_len: torch.Tensor,
                     beta: float, loss_type: str, label_smoothing: float, simpo_gamma: float) -> PreferenceLoss:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 0.5)")
    if loss_type == "simpo":
        c, r = policy_chosen / chosen_len, policy_rejected / rejected_len
        logits = beta * (c - r) - simpo_gamma
        losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
        return PreferenceLoss(losses, (beta * c).detach(), (beta * r).detach())
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(f"loss_type={loss_type!r} needs the reference model's log-probs")
    if loss_type == "ipo":  # on per-token averages, as IPO's paper and TRL do
        h = (policy_chosen - ref_chosen) / chosen_len - (policy_rejected - ref_rejected) / rejected_len
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        logits = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
        losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(losses, (beta * (policy_chosen - ref_chosen)).detach(),
                          (beta * (policy_rejected - ref_rejected)).detach())


def reward_metrics(out: PreferenceLoss) -> dict[str, float]:
    """TRL's preference metrics as plain floats: rewards/chosen, /rejected, /margins, /accuracies."""
    margins = out.chosen_rewards - out.rejected_rewards
    return {"rewards/chosen": float(out.chosen_rewards.mean()), "rewards/rejected": float(out.rejected_rewards.mean()),
            "rewards/margins": float(margins.mean()), "rewards/accuracies": float((margins > 0).float().mean())}


def pairwise_reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The reward model's loss per pair [B]: −log σ(r_chosen − r_rejected − margin) (Llama 2's optional margin)."""
    return -F.logsigmoid(r_chosen - r_rejected - margin)
