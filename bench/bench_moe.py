"""MoE dispatch speed: our sort-by-expert dispatch vs MiniMind's masked dispatch and transformers' DeepSeek-V3 MoE.

Run: python bench/bench_moe.py [--tokens 1024] [--steps 10]
Times forward + backward of one MoE layer at the minimind-moe shape (d=512, 4 routed experts of hidden 1408,
top-2, 1 shared expert), all three with the same weights, fp32, and prints each one's best time (rows take turns) as a ratio
against ours measured in the same run (> 1 means slower than ours).
"""

from __future__ import annotations

import argparse
import time

import torch

from scratchlm.config import load_config
from scratchlm.model.layers import SwiGLU
from scratchlm.model.moe import MoE


def minimind_style(m: MoE, x: torch.Tensor) -> torch.Tensor:
    """MiniMind's training path: repeat every token k times, fill each expert's rows through a boolean mask."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    _, idx, w = m.route(x)
    flat_idx = idx.reshape(-1)  # [N·k], token-major
    xr = x.repeat_interleave(m.top_k, dim=0)  # [N·k, D]
    y = torch.empty_like(xr)
    for e, expert in enumerate(m.experts):
        mask = flat_idx == e
        y[mask] = expert(xr[mask]).to(y.dtype)
    y = (y.view(*w.shape, -1) * w.unsqueeze(-1)).sum(dim=1)
    return (y + m.shared(x)).view(shape)


def time_rows(rows: list, x: torch.Tensor, steps: int) -> list[float]:
    """Best seconds per forward+backward for each row; rows take turns so machine load hits all alike."""
    for _, fn in rows:  # warm-up
        fn(x).sum().backward()
    best = [float("inf")] * len(rows)
    for _ in range(steps):
        for i, (_, fn) in enumerate(rows):
            start = time.perf_counter()
            fn(x).sum().backward()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main() -> None:
    """Build the three implementations with shared weights, time them, print ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512, help="tokens per step (batch × seq_len)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = load_config("minimind-moe", ["model.router_scoring=sigmoid", "model.aux_loss_coef=0"]).model
    ours = MoE(cfg).train()
    x = torch.randn(1, args.tokens, cfg.d_model, requires_grad=True)
    rows = [("ours (sort by expert, index_add_)", lambda t: ours(t)[0])]
    rows.append(("MiniMind-style (repeat + masks)", lambda t: minimind_style(ours, t)))
    # The floor: one dense SwiGLU doing the same active work (top_k routed + shared hidden), no routing.
    active_hidden = (cfg.top_k + cfg.n_shared_experts) * cfg.moe_ffn_hidden
    dense = SwiGLU(cfg.d_model, active_hidden)
    rows.append((f"dense SwiGLU, hidden {active_hidden} (no-routing floor)", dense))
    try:
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

        hf_cfg = DeepseekV3Config(
            hidden_size=cfg.d_model, moe_intermediate_size=cfg.moe_ffn_hidden, n_routed_experts=cfg.n_routed_experts,
            num_experts_per_tok=cfg.top_k, n_shared_experts=cfg.n_shared_experts, n_group=1, topk_group=1,
            routed_scaling_factor=1.0, norm_topk_prob=True, hidden_act="silu",
        )
        hf_cfg._experts_implementation = "eager"  # the reference loop over experts, as a standalone module
        hf = DeepseekV3MoE(hf_cfg).train()
        with torch.no_grad():
            hf.gate.weight.copy_(ours.gate.weight)
            for e, ex in enumerate(ours.experts):
                hf.experts.gate_up_proj[e].copy_(torch.cat([ex.w1.weight, ex.w3.weight]))
                hf.experts.down_proj[e].copy_(ex.w2.weight)
            hf.shared_experts.gate_proj.weight.copy_(ours.shared.w1.weight)
            hf.shared_experts.up_proj.weight.copy_(ours.shared.w3.weight)
            hf.shared_experts.down_proj.weight.copy_(ours.shared.w2.weight)
        with torch.no_grad():
            diff = (hf(x) - ours(x)[0]).abs().max().item()
        rows.append((f"transformers DeepseekV3MoE (max |diff| {diff:.1e})", hf))
    except ImportError:
        print("transformers' DeepSeek-V3 not installed: skipping that row")

    print(f"MoE layer fwd+bwd, {args.tokens} tokens, d={cfg.d_model}, E={cfg.n_routed_experts}, "
          f"top_k={cfg.top_k}, hidden={cfg.moe_ffn_hidden}, shared={cfg.n_shared_experts}, "
          f"threads={torch.get_num_threads()}, fp32 CPU")
    best = time_rows(rows, x, args.steps)
    for (name, _), sec in zip(rows, best):
        print(f"  {name:<52s} {sec * 1e3:8.1f} ms/step   {sec / best[0]:5.2f}× ours")

if __name__ == "__main__":
    main()
