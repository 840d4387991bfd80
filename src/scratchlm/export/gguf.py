"""Export a run folder to one GGUF file that llama.cpp (llama-cli, llama-server) loads as its `llama` architecture.

What is written (written with the `gguf` package's GGUFWriter):
- weights: our state dict → transformers' Llama names (`hf_mapping.to_hf_state_dict`, the one name table)
  → GGUF names (`GGUF_NAMES`). A tied lm_head is left out: llama.cpp then uses token_embd as the output.
- q/k permuted: we rotate with the rotate-half layout (dims i and i + d/2 form a pair, as transformers' Llama);
  llama.cpp's `llama` architecture rotates adjacent pairs (2i, 2i + 1). Reordering each head's rows of wq and
  wk from [x_0..x_{d/2-1} | y_0..y_{d/2-1}] to [x_0, y_0, x_1, y_1, ...] makes the same dot products q·k (the
  permutation acts on q and k alike, so attention scores are unchanged); v and wo are not rotated.
- the tokenizer: gpt2-style byte-level BPE (tokens in their byte-level form, token types, merges), the
  pre-tokenizer name `starcoder` (see `PRE_TOKENIZER`), the ChatML chat template, eos = <|im_end|>, no BOS
  prepended (bos_token_id names <|endoftext|> only because llama.cpp wants some id), pad = <|endoftext|>.
- dtype: f32, f16 (2-D weights; norms stay f32 as llama.cpp wants), or q8_0 (2-D weights whose rows are a
  multiple of 32, quantized by `gguf.quants`; the others fall back to f16).
Configs llama.cpp's `llama` architecture does not compute (MLA, MoE, DyT norms, a sliding window, our static NTK
RoPE) are refused with a ConfigError naming the field. A LoRA run is merged into its base first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.config import ConfigError, ModelConfig

DTYPES = ("f32", "f16", "q8_0")
# llama.cpp refuses a BPE pre-tokenizer name it does not know. Ours is Digits(individual) then the GPT-2 regex
# (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`), exactly llama.cpp's
# `starcoder` list (`\p{N}`, then that regex). `qwen2` differs: case-insensitive contractions ("'S" one piece),
# letters take any one leading non-letter (".Hello" one piece, ours splits "." "Hello"), and newline runs.
PRE_TOKENIZER = "starcoder"
Q8_BLOCK = 32  # Q8_0 quantizes blocks of 32 values along a row

# transformers' Llama names (after `to_hf_state_dict`) → llama.cpp's tensor names
GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
GGUF_BLOCK_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def check_llama_compatible(cfg: ModelConfig) -> None:
    """Raise a ConfigError naming the first field llama.cpp's `llama` architecture cannot compute."""
    for field, ok, why in (
        ("attention", cfg.attention == "mha", "MLA needs llama.cpp's deepseek2 architecture, which this export does not write"),
        ("n_routed_experts", not cfg.is_moe, "MoE layers are not exported to GGUF"),
        ("norm", cfg.norm == "rmsnorm", "llama.cpp's llama architecture uses RMSNorm, not DyT"),
        ("sliding_window", not cfg.sliding_window, "llama.cpp's llama architecture attends to the whole context"),
        ("rope_scaling", cfg.rope_scaling in ("none", "linear", "yarn"),
         "our NTK RoPE is a static base change llama.cpp has no setting for; none, linear and yarn export"),
    ):
        if not ok:
            raise ConfigError(f"model.{field}={getattr(cfg, field)!r}: cannot export to GGUF ({why})")


def gguf_tensor_name(hf_name: str) -> str:
    """transformers' Llama tensor name → llama.cpp's (`model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`)."""
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        inner = ".".join(parts[3:-1])
        if inner in GGUF_BLOCK_NAMES:
            return f"blk.{parts[2]}.{GGUF_BLOCK_NAMES[inner]}.weight"
    raise ValueError(f"{hf_name}: no llama.cpp tensor name")


def rope_to_interleaved(w: Any, n_heads: int) -> Any:
    """Reorder each head's output rows of a q or k projection [n_heads·d, in] from rotate-half pairs
    (i, i + d/2) to llama.cpp's adjacent pairs (2i, 2i + 1)."""
    rows = w.shape[0]
    d = rows // n_heads
    # [H, 2 (half), d/2, in] → [H, d/2, 2, in]: row j of the first half then row j of the second
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(state_dict: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """Our state dict → {llama.cpp name: float32 numpy array}, q and k permuted for llama.cpp's RoPE."""
    from scratchlm.export.hf_mapping import to_hf_state_dict

    check_llama_compatible(cfg)
    out: dict[str, Any] = {}
    for hf_name, t in to_hf_state_dict(state_dict, cfg).items():
        w = t.detach().float().cpu().numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            w = rope_to_interleaved(w, cfg.n_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            w = rope_to_interleaved(w, cfg.n_kv_heads)
        out[gguf_tensor_name(hf_name)] = w
    return out


def vocab_entries(tokenizer: Any, n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of our byte-level BPE for GGUF's gpt2 tokenizer, padded to `n_vocab` rows."""
    import json

    from gguf import TokenType

    from scratchlm.tokenizer.bpe import TAG_TOKENS

    spec = json.loads(tokenizer._tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    added = {a["id"]: a for a in spec["added_tokens"]}
    if tokenizer.vocab_size > n_vocab:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {n_vocab} embedding rows")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]  # embedding rows no token reaches, as llama.cpp's converter does
    types = [int(TokenType.UNUSED)] * n_vocab
    for text, i in vocab.items():
        tokens[i], types[i] = text, int(TokenType.NORMAL)
    for i, a in added.items():
        tokens[i] = a["content"]
        # control tokens are matched in text only when llama.cpp is asked to parse specials (our allow_special);
        # the tags are user-defined: matched in any text, as our plain encode does
        types[i] = int(TokenType.USER_DEFINED if a["content"] in TAG_TOKENS else TokenType.CONTROL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, types, merges


def export_gguf(run_dir: str | Path, out: str | Path, dtype: str = "f32") -> Path:
    """Write `run_dir` as one GGUF file at `out` (llama architecture, our tokenizer and chat template); returns `out`."""
    import numpy as np

    try:
        import gguf
    except ImportError:
        raise ImportError("the GGUF export needs the `gguf` package: pip install 'scratchlm[export]'") from None

    from scratchlm.model.lora import merge_lora
    from scratchlm.runs import load_run, refuse_quantized, run_kind
    from scratchlm.tokenizer.bpe import CHAT_TEMPLATE

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    run_dir, out = Path(run_dir), Path(out)
    refuse_quantized(run_dir, "export gguf")  # the formats hold float (or their own quantized) weights
    model, tokenizer, cfg = load_run(run_dir)
    mcfg = cfg.model
    if cfg.train.objective == "reward":
        raise ConfigError(f"{run_dir}: a reward model (train.objective='reward') has a score head llama.cpp's "
                          "llama architecture does not hold; export its policy run instead")
    if tokenizer is None:
        raise FileNotFoundError(f"{run_dir}: no tokenizer.json; the GGUF export needs the run's tokenizer")
    check_llama_compatible(mcfg)  # the clear error before any work
    if run_kind(run_dir) == "adapter":
        merge_lora(model)
    tensors = gguf_tensors(model.state_dict(), mcfg)
    tokens, types, merges = vocab_entries(tokenizer, mcfg.vocab_size)

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(mcfg.name)
    w.add_context_length(mcfg.max_seq_len)
    w.add_embedding_length(mcfg.d_model)
    w.add_block_count(mcfg.n_layers)
    w.add_feed_forward_length(mcfg.ffn_hidden)
    w.add_head_count(mcfg.n_heads)
    w.add_head_count_kv(mcfg.n_kv_heads)
    w.add_key_length(mcfg.head_dim)
    w.add_value_length(mcfg.head_dim)
    w.add_rope_dimension_count(mcfg.head_dim)
    w.add_rope_freq_base(mcfg.rope_theta)
    if mcfg.rope_scaling == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(mcfg.rope_factor)
    elif mcfg.rope_scaling == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(mcfg.rope_factor)
        w.add_rope_scaling_orig_ctx_len(mcfg.rope_original_max_seq_len)
        w.add_rope_scaling_yarn_beta_fast(mcfg.yarn_beta_fast)
        w.add_rope_scaling_yarn_beta_slow(mcfg.yarn_beta_slow)
    w.add_layer_norm_rms_eps(mcfg.norm_eps)
    w.add_vocab_size(mcfg.vocab_size)
    w.add_file_type(file_type)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE_TOKENIZER)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.endoftext_id)
    w.add_add_bos_token(False)  # ChatML: nothing is prepended
    w.add_eos_token_id(tokenizer.eos_id)
    w.add_eot_token_id(tokenizer.eos_id)
    w.add_pad_token_id(tokenizer.pad_id)
    w.add_chat_template(CHAT_TEMPLATE)

    if dtype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        if a.ndim == 1 or dtype == "f32":
            w.add_tensor(name, a)
        elif dtype == "q8_0" and a.shape[-1] % Q8_BLOCK == 0:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:  # f16, and q8_0's rows that are not whole blocks
            w.add_tensor(name, a.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out)  # a crash never leaves a half-written file under the real name
    return out
