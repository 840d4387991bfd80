"""Muon for the hidden matrices, AdamW for everything else, as one optimizer (Keller Jordan's Muon, modded-nanogpt).

Muon ("MomentUm Orthogonalized by Newton–Schulz") keeps SGD momentum M for a weight matrix W [rows, cols] and
steps along the *orthogonalised* momentum: the matrix O = U·Vᵀ of M's SVD M = U·S·Vᵀ, every singular value set to
1. An AdamW or SGD step on a matrix is dominated by a few large singular directions; O moves every direction
the gradient has by the same amount, so the rare directions learn as fast as the common ones.

The SVD is too slow for every step, so O is approximated by a few steps of an odd matrix polynomial (a Newton–
Schulz iteration) applied to X = M / ‖M‖_F: each step maps every singular value σ of X to p(σ) = aσ + bσ³ + cσ⁵
and leaves U and V alone. See `newton_schulz` for the coefficients.

Which parameters get Muon (`muon_param_names`): the `weight` of every nn.Linear in the network's body, i.e.
attention and MLP projections, each MoE expert's w1/w2/w3 (every expert is its own nn.Linear, so each is
orthogonalised on its own; nothing is 3-D here), the shared experts, MLA's down/up projections and MTP's `proj`.
AdamW gets the rest, as the recipes do:
- the embedding and any output head (`lm_head`, a reward model's or critic's `head`): their rows are looked up
  or read one token/score at a time, not used as one linear map, so orthogonalising them has no meaning (and the
  embedding is tied to lm_head);
- norm gains, DyT's α/β, biases: vectors and scalars, where Newton–Schulz does not apply;
- the MoE router's `gate.weight` [E, D] (an nn.Parameter, not a Linear): a small classifier whose logits pick
  experts in float32; the recipes that run Muon on MoE models keep it on AdamW too;
- LoRA's `lora_A` / `lora_B`: rank-r factors whose product is the update; orthogonalising each factor does not
  orthogonalise the product, and the LoRA recipes are tuned for AdamW. A LoRA run with train.optimizer=muon
  therefore trains exactly as with adamw (the Muon group is empty).

The AdamW groups step with torch's own AdamW kernel (`torch.optim.adamw.adamw`), so they update exactly as
torch.optim.AdamW would; only the Muon step is written out here. The per-parameter state uses torch's names
(`momentum_buffer` as torch.optim.Muon; `step`, `exp_avg`, `exp_avg_sq` as torch.optim.AdamW), so the loop's
checkpoints (torch.distributed.checkpoint's name-keyed state dicts) save and restore it unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn
from torch.optim.adamw import adamw  # torch's functional AdamW: the exact kernel torch.optim.AdamW runs

# Keller Jordan's quintic: (a, b, c) with p(σ) = aσ + bσ³ + cσ⁵. The slope at 0 is a = 3.4445, so a tiny singular
# value grows ~3.4× per step and 5 steps lift anything above ~2e-3 (3.4445⁵ ≈ 490) to about 1; the price is that p does not settle
# at exactly 1 but oscillates in roughly [0.7, 1.2]. Muon needs "about orthogonal", not exactly orthogonal, and
# trains as well with this as with the exact U·Vᵀ (his measurements), so the fast-rising polynomial wins.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7  # guards the division by ‖M‖_F when a gradient is all zeros (e.g. an expert no token reached)
HEAD_NAMES = ("lm_head", "head")  # Linear modules that are output heads, not hidden maps


def newton_schulz(g: torch.Tensor, steps: int = 5, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = NS_EPS) -> torch.Tensor:
    """≈ U·Vᵀ of g = U·S·Vᵀ (a 2-D matrix) by `steps` quintic Newton–Schulz iterations, in bfloat16."""
    if g.dim() != 2:
        raise ValueError(f"newton_schulz: a 2-D matrix is needed, got shape {tuple(g.shape)}")
    a, b, c = coefficients
    # bfloat16, as torch.optim.Muon and modded-nanogpt: the iteration only has to land the singular values near 1
    # and tolerates the rounding; GPUs' bf16 matmuls are the fast ones, and on the 2-core AVX512-BF16 dev CPU a
    # [512, 1408] step measured as fast as in float32 (one thread).
    x = g.bfloat16()
    # Work with the wide orientation: X·Xᵀ is then [min, min], the smaller Gram matrix. The result is transposed back.
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    # The Frobenius norm bounds the spectral norm, so after this every σ ≤ 1, where p pulls σ towards 1 (well
    # above 1 the quintic runs away: p(1.5) ≈ 4.5).
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T  # [m, m], σ² on the diagonal of its eigenbasis
        # p(X) = aX + bX·XᵀX + cX·(XᵀX)² = (a·I + b·A + c·A²)·X with A = X·Xᵀ; addmm fuses each "β·C + α·P·Q"
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
        x = torch.addmm(x, poly, x, beta=a)  # a·X + (b·A + c·A²)·X
    return x.T if tall else x


def lr_multiplier(shape: torch.Size | tuple[int, ...], adjust: str) -> float:
    """How much a Muon step on a matrix of `shape` [rows, cols] scales the group's lr (torch's `adjust_lr_fn`)."""
    rows, cols = shape[0], shape[1]
    if adjust == "original":
        # Keller's: O has unit singular values, so its RMS entry is 1/√max(rows, cols). × √max(1, rows/cols) makes
        # it 1/√cols for every shape: the step is the same size per input feature (fan-in), whichever way round.
        return math.sqrt(max(1.0, rows / cols))
    if adjust == "match_rms_adamw":
        # Moonshot's ("Muon is Scalable for LLM Training"): O's RMS is 1/√max(rows, cols); × 0.2·√max makes its RMS
        # 0.2, about an AdamW update's, so train.lr and weight_decay tuned for AdamW carry over.
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown Muon lr adjustment {adjust!r}; allowed: original, match_rms_adamw")


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole matrix of a (possibly FSDP2-sharded) DTensor: Newton–Schulz needs every row at once."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `ref` (this process's shard of it when ref is a DTensor; every process holds the same
    full matrix, so each takes its own slice without communicating)."""
    if not hasattr(ref, "full_tensor"):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, ref.device_mesh, ref.placements, src_data_rank=None)


@torch.no_grad()
def muon_update(param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, *, lr: float, weight_decay: float,
                momentum: float, nesterov: bool, ns_steps: int, adjust: str) -> None:
    """One Muon step on one matrix, in place: momentum, Newton–Schulz, decoupled weight decay, the scaled step."""
    # Momentum as an exponential average, buf ← μ·buf + (1 − μ)·g (torch's and Keller's form; the (1 − μ) is a
    # constant factor that the normalisation inside newton_schulz removes anyway).
    buf.lerp_(grad, 1 - momentum)
    # Nesterov: step along where the momentum is heading, (1 − μ)·g + μ·buf, rather than along buf itself.
    update = grad.lerp(buf, momentum) if nesterov else buf
    ortho = _like(newton_schulz(_full(update), ns_steps), update)
    # Decoupled weight decay at the unscaled lr (as AdamW and torch.optim.Muon), then the step.
    param.mul_(1 - lr * weight_decay)
    param.add_(ortho, alpha=-lr * lr_multiplier(param.shape, adjust))


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two rules: groups with `use_muon=True` step with Muon, the others with AdamW.

    Muon groups hold: lr, weight_decay, momentum, nesterov, ns_steps, adjust ("original" | "match_rms_adamw").
    AdamW groups hold: lr, betas, eps, weight_decay. One object keeps the loop's `set_lr` (every group's
    lr_scale), clipping and the name-keyed checkpoint state exactly as they are for plain AdamW."""

    def __init__(self, groups: Iterable[dict[str, Any]], fused: bool | None = None) -> None:
        groups = list(groups)
        for g in groups:
            if g.get("use_muon"):
                for p in g["params"]:
                    if p.dim() != 2:
                        raise ValueError(f"Muon takes 2-D matrices only, got a parameter of shape {tuple(p.shape)}")
        super().__init__(groups, {"use_muon": False, "lr": 1e-3, "weight_decay": 0.0})
        self.fused = fused

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Step every group by its rule; parameters without a gradient are skipped."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict[str, Any]) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            muon_update(p, p.grad, state["momentum_buffer"], lr=group["lr"], weight_decay=group["weight_decay"],
                        momentum=group["momentum"], nesterov=group["nesterov"], ns_steps=group["ns_steps"],
                        adjust=group["adjust"])

    def _adamw_group(self, group: dict[str, Any]) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:  # as torch.optim.AdamW lays its state out (step: a float32 scalar, on the device if fused)
                state["step"] = (torch.zeros((), dtype=torch.float32, device=p.device) if self.fused
                                 else torch.tensor(0.0, dtype=torch.float32))
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        adamw(params, grads, exp_avgs, exp_avg_sqs, [], steps, fused=self.fused,
                amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)


def muon_param_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters that Muon steps (the hidden nn.Linear weights; see the module docstring)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}  # lm_head may be tied to it
    hidden = set()
    for mod_name, m in model.named_modules():
        leaf = mod_name.rsplit(".", 1)[-1]
        if isinstance(m, nn.Linear) and leaf not in HEAD_NAMES and not leaf.startswith("lora_"):
            hidden.add(id(m.weight))
    return [n for n, p in model.named_parameters()
            if p.requires_grad and p.dim() == 2 and id(p) in hidden and id(p) not in embeddings]
