"""Parity: our dense model with weights copied into transformers' LlamaForCausalLM gives the same logits."""

import pytest
import torch

from scratchlm.config import load_config
from scratchlm.export.hf_mapping import hf_model, llama_config, to_hf_state_dict
from scratchlm.model.transformer import Transformer

pytest.importorskip("transformers")

CASES = {
    "mha_tied": ["model.n_kv_heads=4"],
    "gqa": ["model.n_kv_heads=2", "model.norm_eps=1e-6", "model.rope_theta=10000"],
    "mqa_untied": ["model.n_kv_heads=1", "model.tie_embeddings=false"],
    "linear_rope": ["model.rope_scaling=linear", "model.rope_factor=2"],
    "yarn_rope": ["model.rope_scaling=yarn", "model.rope_factor=4", "model.rope_original_max_seq_len=32"],
}


def _randomise_norms(model):
    # Norm weights start at 1; random values make sure they are really mapped.
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.uniform_(p, 0.5, 1.5)


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_logits_match_llama(case):
    torch.manual_seed(0)
    model = Transformer(load_config("debug", CASES[case]).model).eval()
    _randomise_norms(model)
    hf = hf_model(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 48))
    ours, theirs = model(ids).logits, hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    # Left-padded batch with an attention mask agrees too (on the real tokens).
    mask = torch.ones_like(ids)
    mask[1, :13] = 0
    a, b = model(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits
    assert (a[mask.bool()] - b[mask.bool()]).abs().max().item() <= 1e-4


def test_config_and_names():
    cfg = load_config("minimind-26m").model
    hf_cfg = llama_config(cfg)
    assert (hf_cfg.hidden_size, hf_cfg.num_key_value_heads, hf_cfg.intermediate_size) == (512, 2, 1408)
    assert hf_cfg.tie_word_embeddings and hf_cfg.rms_norm_eps == cfg.norm_eps
    small = Transformer(load_config("debug").model)
    names = to_hf_state_dict(small.state_dict(), small.config)
    assert "model.layers.1.self_attn.k_proj.weight" in names and "lm_head.weight" not in names
    with pytest.raises(ValueError, match="only dense RMSNorm"):
        llama_config(load_config("debug", ["model.attention=mla"]).model)
    with pytest.raises(ValueError, match="no transformers equivalent"):
        llama_config(load_config("debug", ["model.rope_scaling=ntk", "model.rope_factor=2"]).model)
