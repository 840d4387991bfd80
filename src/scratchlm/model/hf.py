"""Our Transformer behind the transformers API: `ScratchLMConfig` and `ScratchLMForCausalLM`, registered
with AutoConfig / AutoModelForCausalLM, so `save_pretrained`, `from_pretrained` and `generate()` work.

This is the wrapper for *our* architecture (every ModelConfig variant: MLA, MoE, DyT, ...); loading it
needs scratchlm installed. The export to a plain Llama folder that needs no scratchlm lives in
scratchlm.export.

Written against transformers 5.x, where configs are dataclasses, `past_key_values` is called `cache` and
`_tied_weights_keys` is a {target: source} dict. Generation uses our own pre-allocated KVCache: the
wrapper puts a small adapter (`ScratchLMCache`) where transformers expects its cache object.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from scratchlm.config import ModelConfig
from scratchlm.model.layers import rope_cache
from scratchlm.model.transformer import Transformer

# ModelConfig fields stored under another name because transformers gives the name a meaning of its
# own: `top_k` would be read as a *sampling* top-k when it builds the generation config, and
# `rope_scaling` is parsed as a dict of RoPE parameters.
_RENAMED = {"top_k": "num_experts_per_tok", "rope_scaling": "rope_scaling_type"}


def _field_default(f) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # pragma: no cover - ModelConfig has none today
        return f.default_factory()
    raise TypeError(f"ModelConfig.{f.name} has no default")


class ScratchLMConfig(PretrainedConfig):
    """transformers config holding every ModelConfig field (a few renamed, see `_RENAMED`)."""

    model_type = "scratchlm"

    def __init__(self, **kwargs: Any):
        values = {}
        for f in fields(ModelConfig):
            key = _RENAMED.get(f.name, f.name)
            values[f.name] = kwargs.pop(key, _field_default(f))
        resolved = ModelConfig(**values)  # validates; fills n_kv_heads, head_dim, ffn_hidden, ...
        for f in fields(ModelConfig):
            setattr(self, _RENAMED.get(f.name, f.name), getattr(resolved, f.name))
        kwargs["tie_word_embeddings"] = resolved.tie_embeddings
        # transformers' generic names, read by generate() and by tools that inspect configs
        kwargs.setdefault("vocab_size", resolved.vocab_size)
        kwargs.setdefault("hidden_size", resolved.d_model)
        kwargs.setdefault("num_hidden_layers", resolved.n_layers)
        kwargs.setdefault("num_attention_heads", resolved.n_heads)
        kwargs.setdefault("max_position_embeddings", resolved.max_seq_len)
        super().__init__(**kwargs)

    def to_model_config(self) -> ModelConfig:
        """Back to our typed ModelConfig."""
        return ModelConfig(**{f.name: getattr(self, _RENAMED.get(f.name, f.name)) for f in fields(ModelConfig)})

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs: Any) -> "ScratchLMConfig":
        """From our ModelConfig (plus transformers kwargs such as eos_token_id)."""
        values = {_RENAMED.get(f.name, f.name): getattr(cfg, f.name) for f in fields(ModelConfig)}
        return cls(**values, **kwargs)


class ScratchLMCache:
    """Adapter that lets transformers' generate() carry our pre-allocated KVCache between steps.

    generate() only asks a cache for its length (`get_seq_length`) and whether it is linear-attention
    (`is_linear`); the KVCache itself is allocated at the first forward, when the batch size is known.
    """

    is_linear = [False]
    is_compileable = False
    is_croppable = False

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.kv = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions consumed so far (left padding included, as in transformers' caches)."""
        return 0 if self.kv is None else self.kv.pos

    def get(self, model: Transformer, batch_size: int):
        """The KVCache, allocated on first use."""
        if self.kv is None:
            self.kv = model.new_cache(batch_size, self.max_len)
        return self.kv


class ScratchLMForCausalLM(PreTrainedModel, GenerationMixin):
    """`Transformer` as a transformers causal LM: forward → CausalLMOutputWithPast, generate() works."""

    config_class = ScratchLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    # {target: source}: the lm_head is the embedding when tie_word_embeddings (read from the config)
    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def __init__(self, config: ScratchLMConfig):
        super().__init__(config)
        self.model = Transformer(config.to_model_config())
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        """Our Transformer initialises its own weights, so leave them; but from_pretrained builds the model
        on the meta device and leaves non-persistent buffers empty, so recompute the RoPE tables."""
        if isinstance(module, Transformer):
            cfg = module.config
            mla = cfg.attention == "mla"  # same call as Transformer.__init__
            cos, sin = rope_cache(cfg, cfg.qk_rope_head_dim if mla else cfg.head_dim, cfg.max_seq_len, not mla)
            module.rope_cos.copy_(cos)
            module.rope_sin.copy_(sin)

    @classmethod
    def from_transformer(cls, model: Transformer, **config_kwargs: Any) -> "ScratchLMForCausalLM":
        """Wrap a trained Transformer (its weights are copied)."""
        wrapped = cls(ScratchLMConfig.from_model_config(model.config, **config_kwargs))
        wrapped.model.load_state_dict(model.state_dict())
        return wrapped.to(next(model.parameters()).device)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> "ScratchLMForCausalLM":
        """transformers' loader, then own copies of the tensors: they arrive as views into the mmapped
        safetensors file at 8-byte-aligned offsets, and unaligned weights take other BLAS kernels
        (MoE logits differed by ~2e-6). Copies make a reload give bit-identical logits."""
        model = super().from_pretrained(*args, **kwargs)
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):  # a tied weight appears once
                t.data = t.data.clone()
        return model

    def get_input_embeddings(self) -> torch.nn.Module:
        """The token embedding (transformers uses it for resizing and tying)."""
        return self.model.embed

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        """Replace the token embedding."""
        self.model.embed = value

    def get_output_embeddings(self) -> torch.nn.Module:
        """The lm_head."""
        return self.model.lm_head

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size, max_cache_length):
        """Give generate() our cache instead of transformers' DynamicCache."""
        if model_kwargs.get("cache") is None and generation_config.use_cache is not False:
            model_kwargs["cache"] = ScratchLMCache(max_cache_length)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,  # unused: positions come from the mask and the cache
        cache: ScratchLMCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """transformers convention: labels are the input ids (shifted inside), -100 = ignore."""
        if cache is not None and not isinstance(cache, ScratchLMCache):
            raise TypeError(f"ScratchLMForCausalLM: cache must be a ScratchLMCache, got {type(cache).__name__}")
        kv = cache.get(self.model, input_ids.size(0)) if cache is not None else None
        targets = None
        if labels is not None:
            targets = torch.full_like(labels, -100)
            targets[:, :-1] = labels[:, 1:]  # targets[:, t] = the token after t
        out = self.model(input_ids, targets=targets, cache=kv, attention_mask=attention_mask)
        logits = out.logits if not logits_to_keep else out.logits[:, -logits_to_keep:]
        return CausalLMOutputWithPast(loss=out.loss, logits=logits, cache=cache)


AutoConfig.register("scratchlm", ScratchLMConfig, exist_ok=True)
AutoModelForCausalLM.register(ScratchLMConfig, ScratchLMForCausalLM, exist_ok=True)
