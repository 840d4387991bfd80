"""Norms, SwiGLU, RoPE and the cross-entropy: definitions, invariants, and agreement with transformers' RoPE numbers."""

import math

import pytest
import torch

from scratchlm.config import load_config
from scratchlm.model.layers import (
    DyT,
    RMSNorm,
    SwiGLU,
    apply_rope,
    cross_entropy_sum,
    make_norm,
    rope_cache,
    rope_inv_freq,
    rotate_half,
)


def test_rmsnorm_unit_rms_and_scale_invariance():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-8)
    x = torch.randn(3, 5, 16) * 7
    y = norm(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3, 5), atol=1e-4)
    assert torch.allclose(norm(x * 3.5), y, atol=1e-5)  # rms normalisation removes any positive scale


@pytest.mark.parametrize("scale", [0.37, -2.0, 0.0])
def test_cross_entropy_sum_equals_torch_with_ignored_rows(scale):
    torch.manual_seed(0)
    logits = torch.randn(12, 50) * 4
    targets = torch.randint(0, 50, (12,))
    for ignored in ([], [0, 5, 11]):
        t = targets.clone()
        t[ignored] = -100
        ours_in, ref_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        ours = cross_entropy_sum(ours_in, t)
        ref = torch.nn.functional.cross_entropy(ref_in, t, ignore_index=-100, reduction="sum")
        (ours * scale).backward()
        (ref * scale).backward()
        assert torch.allclose(ours, ref, atol=1e-5)
        assert torch.allclose(ours_in.grad, ref_in.grad, atol=1e-6)
        if ignored:
            assert ours_in.grad[ignored].abs().max() == 0
    all_ignored = torch.full((12,), -100)
    assert cross_entropy_sum(logits, all_ignored) == 0
    with pytest.raises(ValueError, match=r"\[N, V\]"):
        cross_entropy_sum(logits[None], targets)
    loss = cross_entropy_sum(logits.clone().requires_grad_(), targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):  # its buffer became the gradient
        loss.backward()


def test_dyt_definition_and_make_norm():
    torch.manual_seed(0)
    cfg = load_config("debug", ["model.norm=dyt", "model.dyt_alpha=0.7"]).model
    norm = make_norm(cfg, cfg.d_model)
    assert isinstance(norm, DyT) and norm.alpha.item() == pytest.approx(0.7)
    with torch.no_grad():
        norm.weight.uniform_()
        norm.bias.uniform_()
    x = torch.randn(2, cfg.d_model)
    assert torch.allclose(norm(x), norm.weight * torch.tanh(0.7 * x) + norm.bias)
    assert isinstance(make_norm(load_config("debug").model, 8), RMSNorm)


def test_swiglu_formula_and_names():
    torch.manual_seed(0)
    ffn = SwiGLU(8, 24)
    assert {n for n, _ in ffn.named_parameters()} == {"w1.weight", "w2.weight", "w3.weight"}
    assert all(m.bias is None for m in (ffn.w1, ffn.w2, ffn.w3))
    for rows in (4, 100):  # few rows: separate matmuls; many rows: one matmul over [w1; w3]
        x = torch.randn(rows, 8)
        expected = ffn.w2.weight @ (torch.nn.functional.silu(ffn.w1.weight @ x.T) * (ffn.w3.weight @ x.T))
        assert torch.allclose(ffn(x), expected.T, atol=1e-6)


def _score(cfg, dim, q, k, i, j, length=64):
    cos, sin = rope_cache(cfg, dim, length)
    return (apply_rope(q, cos[i], sin[i]) * apply_rope(k, cos[j], sin[j])).sum()


@pytest.mark.parametrize("scaling", ["none", "linear", "ntk", "yarn"])
def test_rope_score_depends_only_on_relative_distance(scaling):
    cfg = load_config("debug", [f"model.rope_scaling={scaling}", "model.rope_factor=4",
                                "model.rope_original_max_seq_len=32"]).model
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)
    s1 = _score(cfg, 16, q, k, 10, 3)
    s2 = _score(cfg, 16, q, k, 40, 33)
    assert torch.allclose(s1, s2, atol=1e-4)
    assert not torch.allclose(s1, _score(cfg, 16, q, k, 10, 4), atol=1e-4)


def test_rope_rotation_preserves_norm_and_rotates_half_pairs():
    cfg = load_config("debug").model
    cos, sin = rope_cache(cfg, 8, 16)
    x = torch.randn(8)
    assert torch.allclose(apply_rope(x, cos[5], sin[5]).norm(), x.norm(), atol=1e-5)
    assert torch.equal(rotate_half(torch.arange(4.0)), torch.tensor([-2.0, -3.0, 0.0, 1.0]))


@pytest.mark.parametrize("scaling", ["linear", "ntk", "yarn"])
def test_rope_scaling_with_factor_one_equals_none(scaling):
    base = load_config("debug").model
    cfg = load_config("debug", [f"model.rope_scaling={scaling}", "model.rope_factor=1"]).model
    for a, b in zip(rope_cache(base, 16, 64), rope_cache(cfg, 16, 64)):
        assert torch.allclose(a, b, atol=1e-6)


def test_rope_linear_and_ntk_definitions():
    cfg = load_config("debug", ["model.rope_theta=10000"]).model
    plain, _ = rope_inv_freq(cfg, 16)
    lin, _ = rope_inv_freq(load_config("debug", ["model.rope_theta=10000", "model.rope_scaling=linear",
                                                 "model.rope_factor=4"]).model, 16)
    assert torch.allclose(lin, plain / 4)  # positions / factor
    ntk, _ = rope_inv_freq(load_config("debug", ["model.rope_theta=10000", "model.rope_scaling=ntk",
                                                 "model.rope_factor=4"]).model, 16)
    theta = 10000 * 4 ** (16 / 14)
    assert torch.allclose(ntk, 1.0 / theta ** (torch.arange(0, 16, 2).float() / 16))
    assert ntk[0] == plain[0] and torch.allclose(ntk[-1], plain[-1] / 4)  # NTK: highest freq kept, lowest ÷ factor


@pytest.mark.parametrize("scaling", ["linear", "yarn"])
def test_rope_matches_transformers(scaling):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = load_config("debug", [f"model.rope_scaling={scaling}", "model.rope_factor=8",
                                "model.rope_original_max_seq_len=64", "model.rope_theta=10000"]).model
    hf = transformers.LlamaConfig(
        hidden_size=cfg.d_model, num_attention_heads=cfg.n_heads, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rope_parameters={"rope_type": scaling, "rope_theta": cfg.rope_theta, "factor": cfg.rope_factor,
                         "original_max_position_embeddings": cfg.rope_original_max_seq_len,
                         "beta_fast": cfg.yarn_beta_fast, "beta_slow": cfg.yarn_beta_slow},
    )
    inv_hf, att_hf = ROPE_INIT_FUNCTIONS[scaling](hf, "cpu")
    inv, att = rope_inv_freq(cfg, cfg.head_dim)
    assert torch.allclose(inv, inv_hf.float(), rtol=1e-6)
    assert att == pytest.approx(att_hf)
    if scaling == "yarn":
        assert att == pytest.approx(0.1 * math.log(8) + 1)
