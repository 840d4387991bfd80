"""AWQ (activation-aware weight quantization): per-input-channel scales that protect the weights which meet large
activations, searched on calibration text, then group-wise int4 weights (model/quant.py's Int4Linear).

Rounding a weight costs in proportion to the activation it multiplies. Scaling input channel j of a weight by
s_j > 1 (and its activation by 1/s_j, folded into the norm or linear before it, as SmoothQuant's factors are)
shrinks that channel's rounding error relative to its value. AWQ takes s_j = mean|x_j|^α from the calibration
activations and, for each group of linears sharing an input, searches α over a grid on the error that matters:
‖X·Q(W·diag(s))ᵀ/s − X·Wᵀ‖² on calibration rows X. α = 0 is plain round-to-nearest, so the search never does
worse than it on those rows.
"""

from __future__ import annotations

import torch

from scratchlm.model.quant import dequantize_per_group, fold_scales, quantize_per_group, smoothing_groups


def awq_scales(abs_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|x|^α ([in]), normalised so that max(s)·min(s) = 1 (the scale of W·s stays that of W)."""
    s = abs_mean.float().clamp(min=1e-4).pow(alpha)
    return s / (s.max() * s.min()).sqrt()


def fake_quant(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """w rounded to group-wise int4 and back to float."""
    return dequantize_per_group(*quantize_per_group(w, group_size))


@torch.no_grad()
def search_alpha(weight: torch.Tensor, rows: torch.Tensor, abs_mean: torch.Tensor, group_size: int,
                 grid: int = 20) -> tuple[float, torch.Tensor, list[float]]:
    """(best α, its scales s, the error at each α of the grid) for weight [out, in] whose inputs are `rows` [R, in]."""
    want = rows @ weight.T  # [R, out]
    errors = []
    best = (float("inf"), 0.0, torch.ones_like(abs_mean))
    for k in range(grid + 1):
        alpha = k / grid
        s = awq_scales(abs_mean, alpha)
        got = rows @ (fake_quant(weight * s, group_size) / s).T
        err = (got - want).pow(2).mean().item()
        errors.append(err)
        if err < best[0]:
            best = (err, alpha, s)
    return best[1], best[2], errors


@torch.no_grad()
def apply_awq(model: torch.nn.Module, stats: dict, group_size: int, grid: int = 20) -> dict[str, float]:
    """Search and fold AWQ's scales into a float model in place (before `quantize_model(model, "awq")`); `stats` are
    quant.calibrate.input_stats of every linear. Returns the α chosen for each group, by the first linear's name."""
    if model.lm_head.weight is model.embed.weight:  # tied: the head's columns are about to change, the table not
        model.lm_head.weight = torch.nn.Parameter(model.embed.weight.detach().clone())
    chosen = {}
    for _, owner, linears in smoothing_groups(model):
        st = stats[linears[0]]
        weight = torch.cat([model.get_submodule(n).weight for n in linears])
        alpha, s, _ = search_alpha(weight, st.rows, st.abs_mean, group_size, grid)
        fold_scales(model, owner, linears, s)
        chosen[linears[0]] = alpha
    return chosen
