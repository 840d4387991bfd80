"""Attention kernels and variants: SDPA == reference, GQA == MHA with repeated KV heads, masks."""

import pytest
import torch

from scratchlm.config import load_config
from scratchlm.model.attention import MLA, Attention, attend
from scratchlm.model.masks import AttnPlan, build_mask
from scratchlm.model.layers import rope_cache
from scratchlm.model.transformer import Transformer


def _rope(cfg, T):
    dim = cfg.qk_rope_head_dim if cfg.attention == "mla" else cfg.head_dim
    cos, sin = rope_cache(cfg, dim, T)
    return cos, sin


def test_build_mask_causal_window_padding():
    pos = torch.arange(5)
    m = build_mask(pos, pos, None, 0)[0, 0]
    assert torch.equal(m, torch.ones(5, 5, dtype=torch.bool).tril())
    w = build_mask(pos, pos, None, 2)[0, 0]  # last 2 positions incl. self
    assert torch.equal(w, torch.ones(5, 5, dtype=torch.bool).tril() & ~torch.ones(5, 5, dtype=torch.bool).tril(-2))
    valid = torch.tensor([[False, False, True, True, True]])
    p = build_mask(pos, pos, valid, 0)[0, 0]
    assert not p[3, :2].any() and p[3, 2:4].all()
    assert p[0, 0] and p.sum(-1).min() >= 1  # a padding query still sees itself: no all-masked rows


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask_kind", ["causal", "window", "padding"])
def test_sdpa_equals_reference(kv_heads, mask_kind):
    torch.manual_seed(0)
    cfg = load_config("debug", [f"model.n_kv_heads={kv_heads}"]).model
    attn = Attention(cfg, 0).eval()
    x = torch.randn(2, 12, cfg.d_model)
    pos = torch.arange(12)
    if mask_kind == "causal":
        plan = AttnPlan(None, is_causal=True)
    elif mask_kind == "window":
        plan = AttnPlan(build_mask(pos, pos, None, 4), is_causal=False)
    else:
        valid = torch.ones(2, 12, dtype=torch.bool)
        valid[1, :5] = False
        plan = AttnPlan(build_mask(pos, pos, valid, 0), is_causal=False)
    y_sdpa = attn(x, _rope(cfg, 12), plan)
    attn.impl = "reference"
    y_ref = attn(x, _rope(cfg, 12), plan)
    assert torch.allclose(y_sdpa, y_ref, atol=1e-5)


@pytest.mark.parametrize("q_lora", [0, 24])
def test_mla_sdpa_equals_reference(q_lora):
    torch.manual_seed(0)
    cfg = load_config("debug", ["model.attention=mla", f"model.q_lora_rank={q_lora}"]).model
    mla = MLA(cfg, 0).eval()
    assert hasattr(mla, "wq_a") == (q_lora > 0) and hasattr(mla, "wq") == (q_lora == 0)
    x = torch.randn(2, 10, cfg.d_model)
    y = mla(x, _rope(cfg, 10), AttnPlan(None, True))
    mla.impl = "reference"
    assert torch.allclose(y, mla(x, _rope(cfg, 10), AttnPlan(None, True)), atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(0)
    gqa_cfg = load_config("debug", ["model.n_heads=4", "model.n_kv_heads=2"]).model
    mha_cfg = load_config("debug", ["model.n_heads=4", "model.n_kv_heads=4"]).model
    gqa, mha = Transformer(gqa_cfg).eval(), Transformer(mha_cfg).eval()
    state = gqa.state_dict()
    hd, rep = gqa_cfg.head_dim, 2
    for i in range(gqa_cfg.n_layers):
        for w in ("wk", "wv"):
            key = f"layers.{i}.attn.{w}.weight"
            # kv head j serves query heads j·rep ... j·rep+rep-1 → give each query head its own copy.
            state[key] = state[key].view(gqa_cfg.n_kv_heads, hd, -1).repeat_interleave(rep, 0).reshape(-1, gqa_cfg.d_model)
    mha.load_state_dict(state)
    ids = torch.randint(0, gqa_cfg.vocab_size, (2, 16))
    assert torch.allclose(gqa(ids).logits, mha(ids).logits, atol=1e-5)


def test_attention_variant_parameter_shapes():
    for kv, expect in [(4, 64), (2, 32), (1, 16)]:
        cfg = load_config("debug", ["model.n_heads=4", f"model.n_kv_heads={kv}"]).model
        a = Attention(cfg, 0)
        assert a.wk.weight.shape == (expect, cfg.d_model) and a.wq.weight.shape == (64, cfg.d_model)


def test_attend_reference_handles_rectangular_causal():
    # T < S with is_causal and no mask is bottom-right aligned in the reference path (decode against a prefix).
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    pos_q, pos_k = torch.arange(2, 5), torch.arange(5)
    explicit = attend(q, k, v, AttnPlan(build_mask(pos_q, pos_k, None, 0), False), 0.3, "reference")
    assert torch.allclose(attend(q, k, v, AttnPlan(None, True), 0.3, "reference"), explicit, atol=1e-6)
    assert torch.allclose(attend(q, k, v, AttnPlan(build_mask(pos_q, pos_k, None, 0), False), 0.3, "sdpa"),
                          explicit, atol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_mla_absorbed_equals_expanded(impl):
    # Decoding with a cached prefix uses the weight-absorbed form; it must equal re-expanding with wkv_b.
    torch.manual_seed(0)
    cfg = load_config("debug", ["model.attention=mla", f"model.attn_impl={impl}"]).model
    mla = MLA(cfg, 0).eval()
    B, H, T, S = 2, cfg.n_heads, 3, 9
    q_nope, q_rope = torch.randn(B, H, T, cfg.qk_nope_head_dim), torch.randn(B, H, T, cfg.qk_rope_head_dim)
    c_kv, k_rope = torch.randn(B, S, cfg.kv_lora_rank), torch.randn(B, S, cfg.qk_rope_head_dim)
    plan = AttnPlan(build_mask(torch.arange(S - T, S), torch.arange(S), None, 0), is_causal=False)
    kv = mla.wkv_b(c_kv).view(B, S, H, -1).transpose(1, 2)
    k_nope, v = kv.split([cfg.qk_nope_head_dim, cfg.v_head_dim], dim=-1)
    k = torch.cat((k_nope, k_rope[:, None].expand(B, H, S, -1)), dim=-1)
    expanded = attend(torch.cat((q_nope, q_rope), -1), k, v, plan, mla.scale, impl)
    assert torch.allclose(mla._absorbed(q_nope, q_rope, c_kv, k_rope, plan, 0.0), expanded, atol=1e-5)


def test_decode_sized_attention_runs_on_one_thread_and_gives_the_same_result(monkeypatch):
    """A decode-sized SDPA call runs with torch on one thread (a passive OpenMP wake-up costs more than the work);
    the result equals the all-threads one to rounding (the kernel splits its sums by thread count), and the thread
    count comes back."""
    import torch.nn.functional as F

    import scratchlm.model.attention as attention
    from scratchlm.device import one_cpu_thread

    n = torch.get_num_threads()
    seen = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: seen.append(torch.get_num_threads()) or sdpa(*a, **k))
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 8, 1, 32), torch.randn(1, 4, 96, 32), torch.randn(1, 4, 96, 32)
    plan = AttnPlan(mask=None, is_causal=False)
    serial = attend(q, k, v, plan, 0.2, "sdpa")  # 1·8·1·96 scores ≤ SERIAL_ATTENTION_SCORES
    monkeypatch.setattr(attention, "SERIAL_ATTENTION_SCORES", 0)
    parallel = attend(q, k, v, plan, 0.2, "sdpa")
    assert seen == [1, n] and torch.get_num_threads() == n
    torch.testing.assert_close(serial, parallel, rtol=0, atol=1e-6)
    big = torch.randn(4, 8, 64, 32), torch.randn(4, 4, 64, 32), torch.randn(4, 4, 64, 32)  # a prefill: all threads
    monkeypatch.setattr(attention, "SERIAL_ATTENTION_SCORES", 8192)
    attend(*big, AttnPlan(mask=None, is_causal=True), 0.2, "sdpa")
    assert seen[-1] == n
    with pytest.raises(RuntimeError, match="inside"), one_cpu_thread():  # restored after an error too
        raise RuntimeError("inside")
    assert torch.get_num_threads() == n


@pytest.mark.parametrize("window", [0, 3])
def test_build_mask_per_row_positions_match_the_paged_formula(window):
    # The paged engine passes each row's own query positions [B, T]; the mask is its causal/valid/window rule.
    cached, new = torch.tensor([0, 4, 2]), 3
    total = cached + new - torch.tensor([0, 1, 2])  # rows 1 and 2 are right-padded
    S = int(total.max())
    q_pos = cached[:, None] + torch.arange(new)[None, :]  # [B, T]
    k_pos = torch.arange(S)
    k_valid = k_pos[None, :] < total[:, None]
    diff = q_pos[:, :, None] - k_pos[None, None, :]
    want = (diff >= 0) & k_valid[:, None, :]
    if window:
        want &= diff < window
    want |= diff == 0
    got = build_mask(q_pos, k_pos, k_valid, window)
    assert got.shape == (3, 1, new, S)
    assert torch.equal(got[:, 0], want)
    # one shared row of positions is the same as that row given per row
    shared = build_mask(q_pos[1], k_pos, k_valid[1:2], window)
    assert torch.equal(shared[0], got[1])


def test_document_positions_and_mask_by_hand():
    from scratchlm.model.masks import build_document_mask, document_positions

    doc_ids = torch.tensor([[0, 0, 1, 1, 1, -1], [4, 4, 4, 4, 7, 7]])  # row 0 ends in padding (its own document)
    assert document_positions(doc_ids).tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 0, 1]]
    m = build_document_mask(doc_ids, 0)
    assert m.shape == (2, 1, 6, 6)
    want0 = torch.tensor([[1, 0, 0, 0, 0, 0],
                          [1, 1, 0, 0, 0, 0],
                          [0, 0, 1, 0, 0, 0],
                          [0, 0, 1, 1, 0, 0],
                          [0, 0, 1, 1, 1, 0],
                          [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(m[0, 0], want0)
    w = build_document_mask(doc_ids, 2)[1, 0]  # a window of 2: itself and the token before, inside its document
    assert w[3].tolist() == [False, False, True, True, False, False] and w[4].tolist() == [False] * 4 + [True, False]


def test_masks_are_made_on_the_inputs_device():
    from scratchlm.model.masks import build_document_mask, document_positions

    doc_ids = torch.zeros(2, 5, dtype=torch.long, device="meta")  # meta stands in for an accelerator
    assert document_positions(doc_ids).device.type == "meta"
    assert build_document_mask(doc_ids, 3).device.type == "meta"
