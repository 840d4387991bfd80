"""The Transformer: cached decoding == full forward for every variant, padding, causality, losses, errors."""

import pytest
import torch

from scratchlm.config import load_config
from scratchlm.model.cache import bytes_per_token
from scratchlm.model.transformer import ModelOutput, Transformer

VARIANTS = {
    "mha": ["model.n_kv_heads=4"],
    "gqa": ["model.n_kv_heads=2"],
    "mqa": ["model.n_kv_heads=1"],
    "mla": ["model.attention=mla"],
    "mla_qlora": ["model.attention=mla", "model.q_lora_rank=24"],
    "moe": ["model.n_routed_experts=4", "model.n_shared_experts=1", "model.top_k=2", "model.moe_ffn_hidden=32"],
    "dyt": ["model.norm=dyt"],
    "yarn": ["model.rope_scaling=yarn", "model.rope_factor=4", "model.rope_original_max_seq_len=32"],
    "reference": ["model.attn_impl=reference"],
}


def _model(overrides, seed=0):
    torch.manual_seed(seed)
    return Transformer(load_config("debug", overrides).model).eval()


def _ids(model, B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=g)


def _decode(model, ids, prefill, max_len=None, attention_mask=None):
    """Prefill `prefill` tokens, then feed the rest one at a time; return logits [B, T, V] and the cache."""
    B, T = ids.shape
    cache = model.new_cache(B, max_len or T)
    outs = [model(ids[:, :prefill], cache=cache, attention_mask=None if attention_mask is None
                  else attention_mask[:, :prefill]).logits]
    for t in range(prefill, T):
        outs.append(model(ids[:, t : t + 1], cache=cache).logits)
    return torch.cat(outs, dim=1), cache


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_cached_decoding_equals_full_forward(variant):
    model = _model(VARIANTS[variant])
    ids = _ids(model, 2, 20)
    full = model(ids).logits
    cached, cache = _decode(model, ids, prefill=7)
    assert cache.pos == 20
    assert torch.allclose(cached, full, atol=1e-4), (cached - full).abs().max()


@torch.no_grad()
def test_chunked_prefill_equals_full_forward():
    model = _model(VARIANTS["gqa"])
    ids = _ids(model, 2, 18)
    cache = model.new_cache(2, 18)
    chunks = [model(ids[:, a:b], cache=cache).logits for a, b in [(0, 5), (5, 12), (12, 18)]]
    assert torch.allclose(torch.cat(chunks, 1), model(ids).logits, atol=1e-4)


@pytest.mark.parametrize("attention", ["mha", "mla"])
@torch.no_grad()
def test_sliding_window_decoding_past_window(attention):
    W = 6
    model = _model(["model.sliding_window=6", f"model.attention={attention}"])
    ids = _ids(model, 2, 25)
    full = model(ids).logits  # banded full forward
    cached, cache = _decode(model, ids, prefill=9, max_len=25)  # prefill already longer than W
    assert torch.allclose(cached, full, atol=1e-4)
    seq_dim = cache.seq_dim
    for a, b in cache.layers:  # the ring never holds more than W positions
        assert a.shape[seq_dim] == W and b.shape[seq_dim] == W
    assert cache.num_cached() == W
    # The window really limits attention: tokens more than W back don't change the last logits...
    changed = ids.clone()
    changed[:, 0] = (changed[:, 0] + 1) % model.config.vocab_size
    assert torch.allclose(model(changed).logits[:, -1], full[:, -1], atol=1e-5)
    # ...but do without a window (sanity check that position 0 matters at all).
    dense = _model([f"model.attention={attention}"])
    assert not torch.allclose(dense(changed).logits[:, -1], dense(ids).logits[:, -1], atol=1e-5)


@pytest.mark.parametrize("variant", ["gqa", "mla", "moe"])
@torch.no_grad()
def test_batched_left_padded_prompts_equal_rows_alone(variant):
    model = _model(VARIANTS[variant])
    lens, T, new = [5, 9, 7], 9, 6
    prompts = [_ids(model, 1, n, seed=10 + i)[0] for i, n in enumerate(lens)]
    ids = torch.zeros(len(lens), T, dtype=torch.long)
    mask = torch.zeros(len(lens), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = p
        mask[i, T - len(p):] = 1
    cont = _ids(model, len(lens), new, seed=99)
    cache = model.new_cache(len(lens), T + new)
    first = model(ids, cache=cache, attention_mask=mask).logits
    steps = [model(cont[:, t : t + 1], cache=cache).logits for t in range(new)]
    # Batched without a cache, with the mask: same last-prompt logits.
    nocache = model(ids, attention_mask=mask).logits
    assert torch.allclose(nocache[:, -1], first[:, -1], atol=1e-4)
    for i, p in enumerate(prompts):
        alone = model(torch.cat((p, cont[i]))[None]).logits[0]  # [len + new, V]
        assert torch.allclose(first[i, -1], alone[len(p) - 1], atol=1e-4)
        for t in range(new):
            assert torch.allclose(steps[t][i, 0], alone[len(p) + t], atol=1e-4)


PACKED_VARIANTS = {**VARIANTS, "window": ["model.sliding_window=4"], "mtp": ["model.mtp_depth=1"]}


@pytest.mark.parametrize("variant", list(PACKED_VARIANTS))
@torch.no_grad()
def test_packed_documents_equal_each_document_alone(variant):
    model = _model(PACKED_VARIANTS[variant])
    lens = [[5, 8, 3], [11, 5]]  # two rows of packed documents (second row ends in 0-padding as doc -1)
    T = 16
    ids = _ids(model, 2, T, seed=3)
    doc_ids = torch.full((2, T), -1)
    for r, row in enumerate(lens):
        starts = [sum(row[:i]) for i in range(len(row))]
        for d, (s0, n) in enumerate(zip(starts, row)):
            doc_ids[r, s0:s0 + n] = d
    packed = model(ids, doc_ids=doc_ids).logits
    for r, row in enumerate(lens):
        s0 = 0
        for n in row:
            alone = model(ids[r:r + 1, s0:s0 + n]).logits[0]
            assert torch.allclose(packed[r, s0:s0 + n], alone, atol=1e-4), (variant, r, s0)
            s0 += n
    # Without doc_ids the later documents see the earlier ones (what the mask prevents).
    assert not torch.allclose(model(ids).logits[0, 5:13], model(ids[:1, 5:13]).logits[0], atol=1e-6)


@torch.no_grad()
def test_packed_mtp_loss_ignores_other_documents():
    model = _model(PACKED_VARIANTS["mtp"])
    ids = _ids(model, 1, 12, seed=4)
    doc_ids = torch.tensor([[0] * 6 + [1] * 6])
    targets = ids.roll(-1, 1)
    targets[:, 5], targets[:, 11] = -100, -100  # the last token of each document predicts nothing
    out = model(ids, targets=targets, doc_ids=doc_ids)
    changed = ids.clone()
    changed[:, :6] = (changed[:, :6] + 3) % model.config.vocab_size  # rewrite document 0 entirely
    out2 = model(changed, targets=targets, doc_ids=doc_ids)
    # Document 1's logits do not move when document 0 changes, packed or not.
    assert torch.allclose(out.logits[:, 6:], out2.logits[:, 6:], atol=1e-5)
    assert torch.isfinite(out.mtp_loss)


@pytest.mark.parametrize("variant", ["gqa", "mla", "moe", "mtp"])
def test_head_on_counted_positions_only_gives_the_same_loss_and_gradients(variant):
    model = _model(PACKED_VARIANTS[variant]).train()
    ids = _ids(model, 2, 16, seed=5)
    targets = ids.roll(-1, 1)
    targets[:, :9] = -100  # SFT-like: only the "assistant" tail counts
    mask = torch.ones_like(targets)
    mask[1, 12:] = 0
    grads = []
    for full in (True, False):
        model.zero_grad()
        torch.manual_seed(0)  # MoE router noise, if any, draws the same
        out = model(ids, targets=targets, loss_mask=mask, full_logits=full)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        if full:
            ref = out
    assert out.logits.shape == (int(((targets != -100) & (mask == 1)).sum()), model.config.vocab_size)
    assert torch.allclose(out.loss, ref.loss, atol=1e-6) and torch.allclose(out.ce_loss, ref.ce_loss, atol=1e-6)
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n
    # Nothing counted: zero loss, and every weight still gets a (zero) gradient, as DDP requires.
    model.zero_grad()
    out = model(ids, targets=torch.full_like(targets, -100), full_logits=False)
    out.loss.backward()
    assert float(out.ce_loss.detach()) == 0.0 and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("variant", ["gqa", "mla"])
@torch.no_grad()
def test_causality(variant):
    model = _model(VARIANTS[variant])
    ids = _ids(model, 2, 16)
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % model.config.vocab_size
    a, b = model(ids).logits, model(changed).logits
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-4)


def test_bytes_per_token_mla_vs_gqa():
    mla = load_config("debug", ["model.attention=mla", "model.n_kv_heads=4"]).model
    gqa = load_config("debug", ["model.n_kv_heads=4"]).model
    for dtype, size in [(torch.float32, 4), (torch.bfloat16, 2)]:
        assert bytes_per_token(mla, dtype) == (mla.kv_lora_rank + mla.qk_rope_head_dim) * mla.n_layers * size
        assert bytes_per_token(gqa, dtype) == 2 * gqa.n_kv_heads * gqa.head_dim * gqa.n_layers * size
        assert bytes_per_token(mla, dtype) < bytes_per_token(gqa, dtype)
    # The real buffers match the formula.
    cache = Transformer(mla).new_cache(1, 10)
    assert sum(a[0, 0].numel() + b[0, 0].numel() for a, b in cache.layers) * 4 == bytes_per_token(mla)


def test_loss_decreases_on_fixed_batch():
    model = _model(VARIANTS["gqa"]).train()
    ids = _ids(model, 4, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(ids[:, :-1], targets=ids[:, 1:])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_loss_mask_and_ignore_index():
    model = _model(VARIANTS["gqa"])
    ids = _ids(model, 2, 12)
    inp, tgt = ids[:, :-1], ids[:, 1:]
    out = model(inp, targets=tgt)
    assert torch.allclose(out.ce_loss, torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), tgt.flatten()))
    mask = torch.zeros_like(tgt)
    mask[:, 4:] = 1
    ignored = tgt.clone()
    ignored[:, :4] = -100
    masked = model(inp, targets=tgt, loss_mask=mask).ce_loss
    per_tok = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), tgt.flatten(), reduction="none").view_as(tgt)
    assert torch.allclose(masked, per_tok[:, 4:].mean())
    assert torch.allclose(masked, model(inp, targets=ignored).ce_loss)
    assert model(inp, targets=torch.full_like(tgt, -100)).ce_loss.item() == 0.0  # nothing counted: 0, not NaN
    assert out.aux_loss.item() == 0.0 and out.mtp_loss is None and torch.equal(out.loss, out.ce_loss)


def test_mtp_loss_present_iff_depth():
    model = _model(["model.mtp_depth=2"]).train()
    ids = _ids(model, 2, 16)
    out = model(ids[:, :-1], targets=ids[:, 1:])
    assert isinstance(out, ModelOutput) and out.mtp_loss is not None and out.mtp_loss.item() > 0
    w = model.config.mtp_loss_weight
    assert torch.allclose(out.loss, out.ce_loss + w * out.mtp_loss + out.aux_loss)
    out.loss.backward()
    assert model.mtp[1].proj.weight.grad is not None and model.mtp[1].proj.weight.grad.abs().sum() > 0
    assert any(n.startswith("mtp.0.block.attn.wq") for n, _ in model.named_parameters())
    # Generation path (no targets) ignores MTP entirely; logits equal a model without MTP modules.
    plain = _model([])
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mtp.")})
    with torch.no_grad():
        assert torch.allclose(plain.eval()(ids).logits, model.eval()(ids).logits, atol=1e-6)


def test_moe_aux_loss_and_active_params():
    model = _model(VARIANTS["moe"] + ["model.aux_loss_coef=0.1", "model.first_dense_layers=1"]).train()
    ids = _ids(model, 2, 16)
    out = model(ids[:, :-1], targets=ids[:, 1:])
    assert out.aux_loss.item() > 0 and torch.allclose(out.loss, out.ce_loss + out.aux_loss)
    cfg = model.config
    per_expert = 3 * cfg.d_model * cfg.moe_ffn_hidden
    n_moe = cfg.n_layers - cfg.first_dense_layers
    assert model.num_params() - model.num_params(active=True) == n_moe * (cfg.n_routed_experts - cfg.top_k) * per_expert
    assert not model.layers[0].is_moe and model.layers[1].is_moe


def test_parameter_names_tying_and_init():
    model = _model([])
    names = {n for n, _ in model.named_parameters()}
    for n in ["embed.weight", "layers.0.attn_norm.weight", "layers.0.attn.wq.weight", "layers.0.attn.wk.weight",
              "layers.0.attn.wv.weight", "layers.0.attn.wo.weight", "layers.0.ffn_norm.weight",
              "layers.0.ffn.w1.weight", "layers.0.ffn.w2.weight", "layers.0.ffn.w3.weight", "norm.weight"]:
        assert n in names
    assert model.lm_head.weight is model.embed.weight
    assert model.num_params() == sum(p.numel() for n, p in model.named_parameters())
    untied = Transformer(load_config("debug", ["model.tie_embeddings=false"]).model)
    assert untied.num_params() == model.num_params() + model.embed.weight.numel()
    assert not any(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Linear))
    std = model.config.init_std
    big = Transformer(load_config("debug", ["model.d_model=256", "model.n_layers=8", "model.n_heads=4"]).model)
    assert big.layers[0].attn.wq.weight.std().item() == pytest.approx(std, rel=0.05)
    assert big.layers[0].attn.wo.weight.std().item() == pytest.approx(std / 4, rel=0.05)  # ÷ sqrt(2·8)
    assert load_config("debug").model and model.num_params() < 1_000_000


def test_presets_build_with_expected_sizes():
    tiny = Transformer(load_config("tiny").model)
    assert 3e6 < tiny.num_params() < 7e6


def test_errors_on_bad_input():
    model = _model([])
    L = model.config.max_seq_len
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, L + 1, dtype=torch.long))
    cache = model.new_cache(1, 8)
    model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="KVCache full.*max_len=8"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.new_cache(1, L + 1)
    with pytest.raises(ValueError, match="batch_size=1"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="batch, time"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="doc_ids shape"):
        model(torch.zeros(2, 4, dtype=torch.long), doc_ids=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot be combined with a KV cache"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=model.new_cache(1, 4), doc_ids=torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("variant", ["gqa", "mla"])
@torch.no_grad()
def test_cache_rollback_then_continue_equals_full(variant):
    # Speculative decoding rolls the cache back by setting pos; what follows must equal a fresh forward.
    model = _model(VARIANTS[variant])
    ids = _ids(model, 1, 16)
    cache = model.new_cache(1, 16)
    model(ids[:, :10], cache=cache)
    model(_ids(model, 1, 4, seed=5), cache=cache)  # rejected draft tokens at positions 10..13
    cache.pos = 10
    rest = model(ids[:, 10:], cache=cache).logits
    assert torch.allclose(rest, model(ids).logits[:, 10:], atol=1e-4)
    with pytest.raises(ValueError, match="only move back"):
        cache.pos = 17


@torch.no_grad()
def test_ring_rollback_limits():
    model = _model(["model.sliding_window=4"])
    ids = _ids(model, 1, 12)
    cache = model.new_cache(1, 12)
    model(ids[:, :9], cache=cache)
    cache.pos = 8  # one back is still within the ring
    assert torch.allclose(model(ids[:, 8:], cache=cache).logits, model(ids).logits[:, 8:], atol=1e-4)
    with pytest.raises(ValueError, match="sliding-window ring"):
        cache.pos = 5
