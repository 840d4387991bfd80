"""`model info` numbers from a ModelConfig alone agree with an instantiated model."""

from __future__ import annotations

import pytest
import torch

from scratchlm.cli import main
from scratchlm.config import load_config
from scratchlm.model.cache import bytes_per_token
from scratchlm.model.info import count_params, flops_per_token, kv_bytes_per_token, model_info
from scratchlm.model.transformer import Transformer

VARIANTS = {
    "gqa": [],
    "mha": ["model.n_kv_heads=4"],
    "mqa": ["model.n_kv_heads=1"],
    "untied": ["model.tie_embeddings=false"],
    "dyt": ["model.norm=dyt"],
    "mla": ["model.attention=mla"],
    "mla_qlora": ["model.attention=mla", "model.q_lora_rank=24"],
    "moe": ["model.n_routed_experts=4", "model.top_k=2", "model.n_shared_experts=1", "model.first_dense_layers=1"],
    "moe_mla_mtp": ["model.attention=mla", "model.n_routed_experts=4", "model.top_k=1", "model.mtp_depth=2"],
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_counted_params_equal_the_model(overrides):
    cfg = load_config("debug", overrides).model
    model = Transformer(cfg)
    # parameters() yields a tied weight once, so this counts the embedding once
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    assert count_params(cfg) == model.num_params()
    assert count_params(cfg, active=True) == model.num_params(active=True)


def test_moe_active_below_total_and_dense_equal():
    moe = load_config("debug", VARIANTS["moe"]).model
    dense = load_config("debug").model
    assert count_params(moe, active=True) < count_params(moe)
    assert count_params(dense, active=True) == count_params(dense)


def test_kv_bytes_mla_below_gqa_and_match_the_cache():
    gqa = load_config("debug").model
    mla = load_config("debug", ["model.attention=mla"]).model
    assert kv_bytes_per_token(mla, 2) < kv_bytes_per_token(gqa, 2)
    assert kv_bytes_per_token(mla, 2) == (mla.kv_lora_rank + mla.qk_rope_head_dim) * mla.n_layers * 2
    for cfg in (gqa, mla):
        assert kv_bytes_per_token(cfg, 4) == bytes_per_token(cfg, torch.float32)
        assert kv_bytes_per_token(cfg, 2) == bytes_per_token(cfg, torch.bfloat16)
        # and what a real cache allocates per position
        cache = Transformer(cfg).new_cache(1, 16)
        allocated = sum(t.numel() * t.element_size() for layer in cache.layers for t in layer)
        assert allocated == 16 * kv_bytes_per_token(cfg, 4)


def test_flops_formula_by_hand():
    cfg = load_config("debug").model
    V, d, L, H, hd = cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.head_dim
    per_layer = d * H * hd + 2 * d * cfg.n_kv_heads * hd + H * hd * d + 3 * d * cfg.ffn_hidden
    expected = 2 * (L * per_layer + V * d) + 2 * L * 100 * H * (hd + hd)
    assert flops_per_token(cfg, 100) == expected
    assert flops_per_token(cfg, 200) > flops_per_token(cfg, 100)
    windowed = load_config("debug", ["model.sliding_window=16"]).model
    assert flops_per_token(windowed, 100) == flops_per_token(windowed, 16)


def test_moe_flops_use_active_params():
    moe = load_config("debug", ["model.n_routed_experts=8", "model.top_k=1"]).model
    more = load_config("debug", ["model.n_routed_experts=8", "model.top_k=2"]).model
    assert flops_per_token(moe, 64) < flops_per_token(more, 64)
    assert model_info(moe).active_params < model_info(moe).total_params


def test_cli_prints_table(capsys):
    assert main(["model", "info", "debug", "--set", "model.attention=mla", "--ctx", "64"]) == 0
    out = capsys.readouterr().out
    cfg = load_config("debug", ["model.attention=mla"]).model
    assert f"{count_params(cfg):,}" in out
    assert "KV cache per token" in out and "FLOPs" in out


def test_cli_bad_field_is_an_error(capsys):
    assert main(["model", "info", "debug", "--set", "model.n_layer=3"]) == 1
    assert "n_layers" in capsys.readouterr().err
    assert main(["model", "info", "debug", "--ctx", "0"]) == 1
