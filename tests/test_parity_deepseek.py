"""Parity: MLA (+ sigmoid MoE with shared experts) against transformers' DeepseekV3ForCausalLM."""

import pytest
import torch

from scratchlm.config import load_config
from scratchlm.export.hf_mapping import deepseek_v3_config, hf_model, to_hf_state_dict
from scratchlm.model.transformer import Transformer

pytest.importorskip("transformers")

MOE = ["model.n_routed_experts=4", "model.n_shared_experts=1", "model.top_k=2", "model.moe_ffn_hidden=32",
       "model.router_scoring=sigmoid", "model.first_dense_layers=1"]
CASES = {
    "mla": ["model.attention=mla"],
    "mla_qlora_yarn": ["model.attention=mla", "model.q_lora_rank=24", "model.rope_scaling=yarn",
                       "model.rope_factor=4", "model.rope_original_max_seq_len=32"],
    "mla_moe": ["model.attention=mla", *MOE],
    "mla_moe_untied": ["model.attention=mla", "model.tie_embeddings=false", "model.norm_topk_prob=false", *MOE],
}


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_logits_match_deepseek_v3(case):
    torch.manual_seed(0)
    model = Transformer(load_config("debug", CASES[case]).model).eval()
    for name, p in model.named_parameters():
        if "norm" in name:
            torch.nn.init.uniform_(p, 0.5, 1.5)
    for name, buf in model.named_buffers():
        if name.endswith("gate.bias"):  # a non-zero balancing bias must steer the choice on both sides
            torch.nn.init.uniform_(buf, -0.05, 0.05)
    hf = hf_model(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 40))
    ours, theirs = model(ids).logits, hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_mapping_names_and_refusals():
    cfg = load_config("deepseek-mini").model
    hf_cfg = deepseek_v3_config(cfg)
    assert hf_cfg.rope_interleave is False and hf_cfg.q_lora_rank == cfg.q_lora_rank
    assert hf_cfg.first_k_dense_replace == cfg.first_dense_layers and hf_cfg.num_experts_per_tok == cfg.top_k
    small = load_config("debug", ["model.attention=mla", "model.mtp_depth=1", *MOE]).model
    sd = to_hf_state_dict(Transformer(small).state_dict(), small, mtp=True)
    assert sd["model.layers.1.mlp.experts.gate_up_proj"].shape == (4, 64, small.d_model)
    assert sd["model.layers.1.mlp.experts.down_proj"].shape == (4, small.d_model, 32)
    assert "model.layers.2.eh_proj.weight" in sd and "model.layers.2.self_attn.kv_b_proj.weight" in sd
    with pytest.raises(ValueError, match="sigmoid"):
        deepseek_v3_config(load_config("debug", ["model.attention=mla", "model.n_routed_experts=4"]).model)
