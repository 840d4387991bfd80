"""The Transformer: embedding → n_layers × Block (pre-norm attention + pre-norm SwiGLU/MoE) → norm → lm_head.

One class covers Llama-style dense models (MHA/GQA/MQA), DeepSeek-style models (MLA attention, MoE feed-
forward, multi-token prediction), DyT instead of RMSNorm, RoPE scaling and sliding-window attention — all
picked by ModelConfig fields. Read it top to bottom: Block, MTP module, Transformer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from scratchlm.config import ModelConfig
from scratchlm.model.attention import MLA, Attention
from scratchlm.model.masks import AttnPlan, build_document_mask, build_mask, document_positions
from scratchlm.model.cache import KVCache
from scratchlm.model.layers import RMSNorm, SwiGLU, cross_entropy_sum, make_norm, rope_cache, token_nll


@dataclass
class ModelOutput:
    """What a forward returns; the loss fields are None without targets."""

    logits: torch.Tensor  # [B, T, V]; [N, V] at the N counted positions when forward(full_logits=False)
    loss: Optional[torch.Tensor] = None  # ce_loss + mtp_loss_weight·mtp_loss + aux_loss: what to backprop
    ce_loss: Optional[torch.Tensor] = None  # next-token cross-entropy only
    aux_loss: Optional[torch.Tensor] = None  # MoE load balancing (already × coef); 0.0 when dense
    mtp_loss: Optional[torch.Tensor] = None  # mean over MTP depths; None unless mtp_depth > 0


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x)) with ffn a SwiGLU or an MoE."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = make_norm(cfg, cfg.d_model)
        self.attn = MLA(cfg, layer_idx) if cfg.attention == "mla" else Attention(cfg, layer_idx)
        self.ffn_norm = make_norm(cfg, cfg.d_model)
        self.is_moe = cfg.layer_is_moe(layer_idx)
        if self.is_moe:
            from scratchlm.model.moe import MoE  # lazy: dense models never need the MoE module

            self.ffn = MoE(cfg)
        else:
            self.ffn = SwiGLU(cfg.d_model, cfg.ffn_hidden, cfg.dropout)

    compiled = False  # set by `compile_blocks`: the cache-free forward (training, scoring) runs compiled

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        plan: AttnPlan,
        cache: Optional[KVCache] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.compiled and cache is None:
            return _compiled_block_body()(self, x, rope, plan)
        return _block_body(self, x, rope, plan, cache)


def _block_body(
    block: Block, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], plan: AttnPlan,
    cache: Optional[KVCache] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A block's computation, x [B, T, D] → (x [B, T, D], MoE aux loss or None): what `compile_blocks` compiles."""
    x = x + block.attn(block.attn_norm(x), rope, plan, cache)
    if block.is_moe:
        y, aux = block.ffn(block.ffn_norm(x))
        return x + y, aux
    return x + block.ffn(block.ffn_norm(x)), None


_COMPILED: list = []


def _compiled_block_body():
    """`_block_body` under torch.compile, made once: every block of every model shares its graphs (their weights
    are graph inputs), so a 16-layer model compiles one graph per shape, not sixteen."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(_block_body))
    return _COMPILED[0]


def compile_blocks(model: nn.Module) -> int:
    """Run every Block of `model` (the trunk, MTP depths, the one inside a reward/value model) compiled when it has
    no KV cache; returns how many. Embedding, masks and the loss stay eager: their shapes depend on the data (packed
    documents, counted targets), the blocks' do not, so the graphs compile once per batch shape and never break.
    Decoding with a cache stays eager here (the engine compiles its own decode step)."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for b in blocks:
        b.compiled = True
    return len(blocks)


class MTPModule(nn.Module):
    """DeepSeek-V3 multi-token prediction depth k: Block(proj([norm(emb(token t+k)); norm(h)])) → h for t+k+1.

    The concat order (embedding first) is DeepSeek-V3's `eh_proj` order, so its weights map without a split.
    """

    def __init__(self, cfg: ModelConfig, depth: int):
        super().__init__()
        self.h_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.emb_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.proj = nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)
        self.block = Block(cfg, cfg.n_layers + depth)  # layer index past the trunk: MoE iff the trunk's last is

    def forward(
        self, h: torch.Tensor, emb: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], plan: AttnPlan
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        x = self.proj(torch.cat((self.emb_norm(emb), self.h_norm(h)), dim=-1))  # [B, T, 2D] → [B, T, D]
        return self.block(x, rope, plan)


class Transformer(nn.Module):
    """Decoder-only language model; see ModelOutput for what forward returns."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg, cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.mtp = nn.ModuleList(MTPModule(cfg, k) for k in range(cfg.mtp_depth))
        # RoPE tables for every position up to max_seq_len. MLA rotates only qk_rope_head_dim dims and takes
        # YaRN's temperature in its softmax scale instead of in cos/sin (as DeepSeek does).
        mla = cfg.attention == "mla"
        cos, sin = rope_cache(cfg, cfg.qk_rope_head_dim if mla else cfg.head_dim, cfg.max_seq_len, not mla)
        self.register_buffer("rope_cos", cos, persistent=False)  # [max_seq_len, rope_dim]
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    # -- init and bookkeeping ------------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """normal(0, init_std) for every Linear/Embedding; residual output projections ÷ sqrt(2·n_layers)."""
        cfg = self.config
        resid_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                # wo (attention out) and w2 (SwiGLU down, incl. experts' and shared) write into the residual
                # stream: scaling them keeps its variance from growing with depth (GPT-2 / nanoGPT).
                residual_out = name.endswith(".wo") or name.endswith(".w2")
                nn.init.normal_(module.weight, mean=0.0, std=resid_std if residual_out else cfg.init_std)

    def num_params(self, active: bool = False) -> int:
        """Parameter count (tied embedding counted once); active=True counts only top_k routed experts."""
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if active:
            for module in self.modules():
                if isinstance(module, Block) and module.is_moe:
                    experts = module.ffn.experts
                    per_expert = sum(p.numel() for p in experts[0].parameters())
                    total -= (len(experts) - self.config.top_k) * per_expert
        return total

    def new_cache(
        self,
        batch_size: int,
        max_len: int,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> KVCache:
        """Pre-allocated KV cache for `batch_size` rows and up to `max_len` positions (model's device/dtype)."""
        p = self.embed.weight
        return KVCache(self.config, batch_size, max_len, device=device or p.device, dtype=dtype or p.dtype)

    # -- forward ----------------------------------------------------------------------------------------

    def _rope(self, pos: torch.Tensor | int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions pos … pos+T-1 (int) → [T, d] views of the tables, for positions [T] → [T, d],
        or per row [B, T] → [B, 1, T, d] (broadcast over heads)."""
        if isinstance(pos, int):
            return self.rope_cos.narrow(0, pos, T), self.rope_sin.narrow(0, pos, T)
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        if pos.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return cos, sin

    def _plan(self, T: int, attention_mask: Optional[torch.Tensor], device: torch.device,
              doc_ids: Optional[torch.Tensor] = None):
        """Attention plan and RoPE positions for a forward without a cache."""
        window = self.config.sliding_window
        if doc_ids is not None and bool((doc_ids != doc_ids[:, :1]).any()):
            # Packed documents: each attends only to itself and its RoPE positions restart at 0, so every
            # document gets exactly the logits it would get alone in a row.
            return AttnPlan(build_document_mask(doc_ids, window), is_causal=False), document_positions(doc_ids)
        if attention_mask is not None and not bool(attention_mask.all()):
            pos = torch.arange(T, device=device)
            valid = attention_mask.bool()
            # Left padding: a row's first real token gets RoPE position 0.
            rope_pos = (valid.long().cumsum(1) - 1).clamp(min=0)  # [B, T]
            return AttnPlan(build_mask(pos, pos, valid, window), is_causal=False), rope_pos
        if window and T > window:
            pos = torch.arange(T, device=device)
            return AttnPlan(build_mask(pos, pos, None, window), is_causal=False), 0
        return AttnPlan(None, is_causal=True), 0

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        cache: Optional[KVCache] = None,
        attention_mask: Optional[torch.Tensor] = None,
        doc_ids: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The trunk: input_ids [B, T] → (last block's output [B, T, D], before the final norm; MoE aux losses).
        Shared by `forward`, `token_logprobs` and models with other heads (reward, value)."""
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"Transformer.forward: input_ids must be [batch, time], got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        start = cache.pos if cache is not None else 0
        if start + T > cfg.max_seq_len:
            raise ValueError(
                f"Transformer.forward: sequence of {start + T} positions ({start} cached + {T} new) is longer "
                f"than model.max_seq_len={cfg.max_seq_len}"
            )
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] not in (T, start + T):
                raise ValueError(
                    f"Transformer.forward: attention_mask shape {tuple(attention_mask.shape)} must be [{B}, {T}] "
                    f"(new tokens) or [{B}, {start + T}] (cached + new)"
                )
            attention_mask = attention_mask[:, -T:]
        if doc_ids is not None:
            if doc_ids.shape != input_ids.shape:
                raise ValueError(f"Transformer.forward: doc_ids shape {tuple(doc_ids.shape)} must equal "
                                 f"input_ids shape {tuple(input_ids.shape)}")
            if cache is not None or attention_mask is not None:
                raise ValueError("Transformer.forward: doc_ids is for training on packed rows; it cannot be "
                                 "combined with a KV cache or an attention_mask")
        if cache is not None:
            if cache.batch_size != B:
                raise ValueError(f"Transformer.forward: cache has batch_size={cache.batch_size}, input has {B} rows")
            plan, rope_pos = cache.plan(T, attention_mask.bool() if attention_mask is not None else None)
        else:
            plan, rope_pos = self._plan(T, attention_mask, input_ids.device, doc_ids)
        rope = self._rope(rope_pos, T)

        x = self.drop(self.embed(input_ids))  # [B, T, D]
        aux_losses = []
        for block in self.layers:
            x, aux = block(x, rope, plan, cache)
            if aux is not None:
                aux_losses.append(aux)
        if cache is not None:
            cache.advance(T)
        return x, aux_losses

    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        doc_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """log p(targets[:, t] | input_ids[:, :t+1]) [B, T], 0 where targets is -100: the one per-token path
        (on the fast cross-entropy, the head only at counted positions) that DPO, reward models, PPO, GRPO and
        distillation use. On a plain model only: a wrapped one reaches it through `forward(..., per_token=True)`."""
        x, _ = self.hidden_states(input_ids, None, attention_mask, doc_ids)
        if targets.shape != input_ids.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal input_ids shape {tuple(input_ids.shape)}")
        keep = targets != -100  # [B, T]
        out = torch.zeros(targets.shape, dtype=torch.float32, device=x.device)
        if bool(keep.any()):
            logits = self.lm_head(self.norm(x[keep]))  # [N, V]
            out = out.masked_scatter(keep, -token_nll(logits.float(), targets[keep]))
        elif torch.is_grad_enabled():  # nothing counted: the head at one position, times 0, keeps it in the graph (DDP)
            out = out + self.lm_head(self.norm(x[:1, :1])).float().sum() * 0.0
        if self.mtp and torch.is_grad_enabled():
            # The MTP heads take no part in these log-probs, but DDP waits for a gradient of every trainable weight:
            # a zero term keeps theirs in the graph (DPO / GRPO / PPO from an MTP run would stop at step 2). FSDP2's
            # sharded weights (DTensors, with a device_mesh) need no such term, and could not be added to a tensor.
            unused = [p.view(-1)[:1] for p in self.mtp.parameters()
                      if p.requires_grad and getattr(p, "device_mesh", None) is None]
            if unused:
                out = out + torch.cat(unused).float().sum() * 0.0
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: Optional[torch.Tensor] = None,
        loss_mask: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        attention_mask: Optional[torch.Tensor] = None,
        doc_ids: Optional[torch.Tensor] = None,
        full_logits: bool = True,
        per_token: bool = False,
    ) -> ModelOutput | torch.Tensor:
        """input_ids [B, T] → ModelOutput; targets[:, t] is the token after input_ids[:, t] (-100 = ignore).

        doc_ids [B, T] (training on packed rows): tokens with different ids never attend to each other.
        full_logits=False (with targets): the output head runs only where a target is counted, which is all
        a training loss needs (in SFT about a third of the positions; the head is a large matmul).
        per_token=True (with targets): instead of a ModelOutput, the log-prob of each target [B, T] (0 where
        not counted), as `token_logprobs`. It is a `forward` argument so that a model wrapped for training
        (DDP, FSDP2, DeepSpeed, torch.compile) computes it inside the wrapper's forward, where gradients are
        synchronised and sharded weights gathered: call it as train.objectives.token_logprobs(model, x, y)."""
        if per_token:
            if targets is None or cache is not None:
                raise ValueError("Transformer.forward(per_token=True) scores given targets: pass targets, no cache")
            if loss_mask is not None:
                targets = self._masked_targets(input_ids.shape, targets, loss_mask)
            return self.token_logprobs(input_ids, targets, attention_mask, doc_ids)
        cfg = self.config
        T = input_ids.shape[-1]
        x, aux_losses = self.hidden_states(input_ids, cache, attention_mask, doc_ids)
        if targets is not None and not full_logits:
            logits, ce_loss = self._counted_ce(x, targets, loss_mask)
        else:
            logits = self.lm_head(self.norm(x))  # [B, T, V]
            if targets is None:
                return ModelOutput(logits=logits)
            ce_loss = self._ce(logits, targets, loss_mask)
        mtp_loss = None
        if self.mtp and cache is None:
            mtp_losses = []
            h = x  # [B, T, D] trunk output before the final norm
            for k, module in enumerate(self.mtp, start=1):
                if T <= k:
                    break
                # Depth k at position i sees token i+k and predicts token i+k+1 = targets[:, i+k].
                n = T - k
                plan_k, pos_k = self._plan(n, None, input_ids.device, None if doc_ids is None else doc_ids[:, k:])
                h, aux = module(h[:, :n], self.embed(input_ids[:, k:]), self._rope(pos_k, n), plan_k)
                if aux is not None:
                    aux_losses.append(aux)
                mtp_logits = self.lm_head(self.norm(h))
                mask_k = loss_mask[:, k:] if loss_mask is not None else None
                mtp_losses.append(self._ce(mtp_logits, targets[:, k:], mask_k))
            mtp_loss = torch.stack(mtp_losses).mean() if mtp_losses else logits.new_zeros(())
        aux_loss = torch.stack(aux_losses).sum() if aux_losses else logits.new_zeros(())
        loss = ce_loss + aux_loss
        if mtp_loss is not None:
            loss = loss + cfg.mtp_loss_weight * mtp_loss
        return ModelOutput(logits=logits, loss=loss, ce_loss=ce_loss, aux_loss=aux_loss, mtp_loss=mtp_loss)

    def _counted_ce(self, x: torch.Tensor, targets: torch.Tensor,
                    loss_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [N, V], mean CE) with the head applied only at the N counted positions of x [B, T, D]."""
        targets = self._masked_targets(x.shape[:2], targets, loss_mask)
        keep = targets != -100  # [B, T]
        if not bool(keep.any()):
            keep = torch.zeros_like(keep)
            keep[0, 0] = True  # nothing counted: one ignored position keeps every weight in the graph (DDP)
        logits = self.lm_head(self.norm(x[keep]))  # [N, V]
        return logits, self._ce(logits[None], targets[keep][None], None)  # as one row of N positions

    @staticmethod
    def _masked_targets(shape: torch.Size, targets: torch.Tensor, loss_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """targets with positions whose loss_mask is 0 set to -100 (shapes checked against input_ids)."""
        if targets.shape != shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal input_ids shape {tuple(shape)}")
        if loss_mask is not None:
            if loss_mask.shape != targets.shape:
                raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} must equal targets shape {tuple(targets.shape)}")
            targets = targets.masked_fill(loss_mask == 0, -100)
        return targets

    @classmethod
    def _ce(cls, logits: torch.Tensor, targets: torch.Tensor, loss_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy over counted tokens (targets != -100 and loss_mask == 1)."""
        targets = cls._masked_targets(logits.shape[:2], targets, loss_mask)
        counted = (targets != -100).sum().clamp(min=1)
        total = cross_entropy_sum(logits.flatten(0, 1).float(), targets.flatten())
        return total / counted
