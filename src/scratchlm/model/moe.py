"""Mixture of Experts: a router picks top_k of E small SwiGLU experts per token, plus always-on shared experts.

Ideas, and where they come from:
- fine-grained routed experts + shared experts that every token passes through (DeepSeekMoE, MiniMind);
- softmax or sigmoid router scores, top-k weights renormalised to sum to 1 (DeepSeek-V3 with sigmoid);
- noisy top-k gating in training: Gaussian noise on the router logits (Shazeer et al. 2017);
- the expert-level load-balancing auxiliary loss (Switch Transformer, DeepSeek);
- aux-loss-free balancing: a per-expert bias added to the scores only to *choose* experts, nudged after
  each training step toward under-loaded experts (DeepSeek-V3);
- an expert capacity in training: assignments over ceil(cf·T·k/E) per expert are dropped (GShard, Switch);
  a dropped slot adds nothing, the token keeps its other slots, the shared expert and the residual.

Dispatch groups the (token, slot) assignments by expert with one stable argsort, runs each expert once on
its contiguous slice, and scatters the weighted outputs back with a single `index_add_`: there is a Python
loop over experts, never over tokens.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from scratchlm.config import ModelConfig
from scratchlm.model.layers import SwiGLU


class Router(nn.Module):
    """The gate: `weight [E, D]` (trainable, no bias) and buffer `bias [E]` used only to choose experts."""

    def __init__(self, d_model: int, n_experts: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))
        # Persistent buffer: it is learned state (by the balancing rule, not by gradients), so it is saved
        # with the model; the name matches transformers' DeepSeek-V3 `e_score_correction_bias` role.
        self.register_buffer("bias", torch.zeros(n_experts))
        nn.init.normal_(self.weight, mean=0.0, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Router logits [N, E] in float32 (routing decisions are precision-sensitive, as in DeepSeek-V3)."""
        # autocast would cast the float32 operands back to bf16/fp16 for the matmul, so step outside it.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float())


class MoE(nn.Module):
    """DeepSeek-style MoE feed-forward: `forward(x [B,T,D]) -> (y [B,T,D], aux_loss scalar)`.

    Parameters: `gate.weight [E, D]`, buffer `gate.bias [E]`, `experts.{e}.{w1,w2,w3}`, and (when
    n_shared_experts > 0) `shared.{w1,w2,w3}`: all shared experts fused into one SwiGLU of hidden
    n_shared_experts·moe_ffn_hidden, since a sum of SwiGLUs on the same input is one wider SwiGLU.

    Routing for N = B·T tokens, scores s = softmax(logits) or sigmoid(logits) [N, E]:
    experts are chosen by top_k of (s + gate.bias), weighted by s at the chosen experts, renormalised to
    sum to 1 when `norm_topk_prob`. y = Σ_slots w·expert(x) + shared(x).

    Aux loss (training only, `aux_loss_coef` > 0), with k = top_k:
        aux = coef · E · Σ_i f_i · P_i
        f_i = (number of (token, slot) assignments routed to expert i) / (N·k)   (uniform → 1/E; no grad)
        P_i = (1/N) Σ_t p_t,i,  p_t = s_t / Σ_j s_t,j   (the softmax itself; sigmoid scores normalised)
    so a perfectly uniform router gives aux = coef. f_i counts assignments before capacity drops.

    Capacity (`capacity_factor` > 0, training only): each expert takes at most ceil(cf·N·k/E) assignments,
    first choices before second choices, then in token order; the rest are dropped (weights not renormalised).
    Bias balancing (`bias_balancing`, training forwards with grad enabled): after the forward,
    gate.bias += rate·sign(mean − load) with load = assignments routed per expert, summed over ranks under
    torch.distributed so every rank keeps the same bias (all ranks must run the same MoE forwards).

    `.last_stats` (plain Python values, refreshed every forward):
        tokens_per_expert: list[int], assignments each expert processed (after capacity drops)
        routed_per_expert: list[int], assignments the router chose (before capacity drops)
        dropped: int, assignments dropped by the capacity limit
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.n_routed_experts < 1:
            raise ValueError(f"MoE needs model.n_routed_experts >= 1, got {cfg.n_routed_experts}")
        self.n_experts = cfg.n_routed_experts
        self.top_k = cfg.top_k
        self.scoring = cfg.router_scoring
        self.norm_topk_prob = cfg.norm_topk_prob
        self.router_noise = cfg.router_noise
        self.aux_loss_coef = cfg.aux_loss_coef
        self.bias_balancing = cfg.bias_balancing
        self.bias_update_rate = cfg.bias_update_rate
        self.capacity_factor = cfg.capacity_factor
        hidden = cfg.moe_ffn_hidden
        self.gate = Router(cfg.d_model, self.n_experts, cfg.init_std)
        self.experts = nn.ModuleList(SwiGLU(cfg.d_model, hidden, cfg.dropout) for _ in range(self.n_experts))
        self.shared = SwiGLU(cfg.d_model, cfg.n_shared_experts * hidden, cfg.dropout) if cfg.n_shared_experts else None
        self.last_stats: dict = {}

    def capacity(self, n_tokens: int) -> int | None:
        """Max assignments per expert for `n_tokens` tokens: ceil(cf·N·k/E); None when unlimited."""
        if self.capacity_factor <= 0:
            return None
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, D] → (scores [N, E] float32, topk_idx [N, k] long, topk_weight [N, k] float32)."""
        logits = self.gate(x)
        if self.training and self.router_noise > 0:
            # Noisy top-k gating: exploration for the choice; the noise also reaches the weights (Shazeer).
            logits = logits + torch.randn_like(logits) * self.router_noise
        scores = logits.softmax(dim=-1) if self.scoring == "softmax" else logits.sigmoid()
        # The balancing bias steers which experts are chosen but never how much they are weighted. It is
        # always applied (zeros unless balancing moved it or imported weights set it); the flag only
        # decides whether training updates it.
        choice = scores.detach() + self.gate.bias
        topk_idx = choice.topk(self.top_k, dim=-1).indices  # [N, k], slot 0 = best expert
        topk_weight = scores.gather(1, topk_idx)  # [N, k], differentiable w.r.t. gate.weight
        if self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
        return scores, topk_idx, topk_weight

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D] → (y [B, T, D], aux_loss scalar float32 tensor; 0.0 when disabled or not training)."""
        if x.dim() != 3 or x.shape[-1] != self.gate.weight.shape[1]:
            raise ValueError(
                f"MoE expects x of shape [B, T, {self.gate.weight.shape[1]}], got {tuple(x.shape)}"
            )
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, D]
        n_tokens, k, n_exp = x.shape[0], self.top_k, self.n_experts
        scores, topk_idx, topk_weight = self.route(x)

        # Flatten assignments slot-major (all tokens' first choices, then all second choices, ...) so a
        # stable sort by expert puts first choices ahead of second choices: under a capacity limit,
        # lower-priority slots are the ones dropped (GShard), ties broken by token order.
        flat_expert = topk_idx.t().reshape(-1)  # [k·N]
        flat_token = torch.arange(n_tokens, device=x.device).repeat(k)  # [k·N]
        flat_weight = topk_weight.t().reshape(-1)  # [k·N]
        order = torch.argsort(flat_expert, stable=True)
        routed = torch.bincount(flat_expert, minlength=n_exp)  # [E] assignments per expert
        sorted_expert = flat_expert[order]
        sorted_token = flat_token[order]
        sorted_weight = flat_weight[order]

        # Capacity applies in training only: at inference a token's output must not depend on which other
        # tokens share its batch, or cached decoding and batched prompts would disagree with a full forward.
        cap = self.capacity(n_tokens) if self.training else None
        if cap is not None:
            # Position of each assignment inside its expert's group; keep the first `cap` of each group.
            starts = torch.cumsum(routed, 0) - routed  # [E]
            pos = torch.arange(order.numel(), device=x.device) - starts[sorted_expert]
            keep = pos < cap
            sorted_token, sorted_weight = sorted_token[keep], sorted_weight[keep]
            kept = routed.clamp(max=cap)
        else:
            kept = routed
        kept_list, routed_list = torch.stack([kept, routed]).tolist()  # one device sync for both

        # One gather, E contiguous slices, one scatter-add. Every expert runs, even on 0 rows, so all expert
        # parameters are in the graph (zero grads, not None) and DDP needs no find_unused_parameters.
        x_sorted = x.index_select(0, sorted_token)  # [kept assignments, D]
        chunks = x_sorted.split(kept_list, dim=0)
        out_sorted = torch.cat([expert(chunk) for expert, chunk in zip(self.experts, chunks)], dim=0)
        out_sorted = out_sorted * sorted_weight.to(out_sorted.dtype).unsqueeze(-1)
        y = torch.zeros_like(x).index_add_(0, sorted_token, out_sorted.to(x.dtype))
        if self.shared is not None:
            y = y + self.shared(x)

        self.last_stats = {
            "tokens_per_expert": kept_list,
            "routed_per_expert": routed_list,
            "dropped": sum(routed_list) - sum(kept_list),
        }

        aux = torch.zeros((), device=x.device, dtype=torch.float32)
        if self.training and self.aux_loss_coef > 0:
            frac = routed.float() / (n_tokens * k)  # f_i [E], a count: no gradient
            probs = scores if self.scoring == "softmax" else scores / scores.sum(-1, keepdim=True)
            aux = self.aux_loss_coef * n_exp * (frac * probs.mean(0)).sum()
        # Only forwards that build a graph count as training steps: rollouts generated under no_grad must
        # neither move the bias nor enter the all_reduce (ranks may generate different numbers of tokens).
        if self.training and self.bias_balancing and torch.is_grad_enabled():
            self._update_bias(routed)
        return y.view(shape), aux

    @torch.no_grad()
    def _update_bias(self, load: torch.Tensor) -> None:
        """DeepSeek-V3 aux-loss-free balancing: bias_i += rate · sign(mean_load − load_i)."""
        load = load.float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Balance the global batch and keep every rank's bias identical.
            dist.all_reduce(load)
        self.gate.bias.add_(self.bias_update_rate * torch.sign(load.mean() - load))
