"""MoE: routing weights, exact top-k dispatch (vs a per-token reference), capacity drops, aux loss,
aux-loss-free bias balancing, noisy gating, shared experts, router gradients, DeepSeek-V3 parity."""

import copy

import pytest
import torch

from scratchlm.config import ModelConfig
from scratchlm.model.moe import MoE


def make_cfg(**kw) -> ModelConfig:
    """A tiny MoE config; keyword arguments override."""
    base = dict(d_model=16, n_heads=2, n_routed_experts=4, n_shared_experts=1, top_k=2, moe_ffn_hidden=24,
                aux_loss_coef=0.0)
    base.update(kw)
    return ModelConfig(**base)


def make_moe(seed: int = 0, **kw) -> MoE:
    """A MoE with seeded random weights."""
    torch.manual_seed(seed)
    return MoE(make_cfg(**kw))


def naive_moe(m: MoE, x: torch.Tensor, drop: frozenset = frozenset()) -> torch.Tensor:
    """Per-token reference: route each token alone and add its experts' weighted outputs.

    `drop` holds (token, expert) assignments that the capacity limit removed.
    """
    flat = x.reshape(-1, x.shape[-1])
    rows = []
    for t in range(flat.shape[0]):
        xt = flat[t : t + 1]  # [1, D]
        logits = xt.float() @ m.gate.weight.float().T  # [1, E]
        s = logits.softmax(-1) if m.scoring == "softmax" else logits.sigmoid()
        idx = torch.topk(s + m.gate.bias, m.top_k, dim=-1).indices[0]
        w = s[0, idx]
        if m.norm_topk_prob:
            w = w / w.sum()
        y = torch.zeros(x.shape[-1])
        for slot, e in enumerate(idx.tolist()):
            if (t, e) not in drop:
                y = y + w[slot] * m.experts[e](xt)[0]
        if m.shared is not None:
            y = y + m.shared(xt)[0]
        rows.append(y)
    return torch.stack(rows).view_as(x)


def naive_counts(m: MoE, x: torch.Tensor) -> list[int]:
    """Assignments per expert chosen by the per-token reference router."""
    counts = [0] * m.n_experts
    for xt in x.reshape(-1, x.shape[-1]):
        s = xt.float() @ m.gate.weight.float().T
        s = s.softmax(-1) if m.scoring == "softmax" else s.sigmoid()
        for e in torch.topk(s + m.gate.bias, m.top_k).indices.tolist():
            counts[e] += 1
    return counts


def routed_input(first: list[int], second: list[int]) -> torch.Tensor:
    """x [1, N, 4] whose router (gate.weight = I) picks `first[t]` then `second[t]` for token t."""
    x = torch.zeros(1, len(first), 4)
    for t, (i, j) in enumerate(zip(first, second)):
        x[0, t, i], x[0, t, j] = 2.0, 1.0
    return x


def identity_router_moe(**kw) -> MoE:
    """d_model = E = 4 with gate.weight = I, so the router's logits are the input itself."""
    m = make_moe(**{"d_model": 4, "n_heads": 1, "moe_ffn_hidden": 8, **kw})
    with torch.no_grad():
        m.gate.weight.copy_(torch.eye(4))
    return m


# Designed routing for 8 tokens, E=4, top_k=2 (see routed_input): per expert, routed = [8, 4, 2, 2].
FIRST = [0, 0, 0, 0, 0, 1, 2, 3]
SECOND = [1, 1, 1, 2, 3, 0, 0, 0]


# ---------------------------------------------------------------------------------------------------
# Router weights


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
def test_router_weights_sum_to_one_when_normalised(scoring):
    m = make_moe(router_scoring=scoring, norm_topk_prob=True, top_k=3)
    _, _, w = m.route(torch.randn(20, 16))
    assert w.shape == (20, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(20))


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
def test_router_weights_are_raw_scores_when_not_normalised(scoring):
    m = make_moe(router_scoring=scoring, norm_topk_prob=False)
    x = torch.randn(20, 16)
    scores, idx, w = m.route(x)
    logits = x @ m.gate.weight.T
    expected = logits.softmax(-1) if scoring == "softmax" else logits.sigmoid()
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(w, expected.gather(1, idx))
    if scoring == "softmax":  # a strict subset of a distribution sums to less than 1
        assert (w.sum(-1) < 1).all()


# ---------------------------------------------------------------------------------------------------
# Dispatch


@pytest.mark.parametrize(
    "kw",
    [
        dict(router_scoring="softmax", norm_topk_prob=True, n_shared_experts=1),
        dict(router_scoring="softmax", norm_topk_prob=False, n_shared_experts=0, top_k=1),
        dict(router_scoring="sigmoid", norm_topk_prob=True, n_shared_experts=2, top_k=3),
        dict(router_scoring="sigmoid", norm_topk_prob=False, n_shared_experts=1, n_routed_experts=6),
    ],
)
def test_every_token_reaches_exactly_top_k_experts_and_matches_reference(kw):
    m = make_moe(**kw)
    with torch.no_grad():
        m.gate.bias.copy_(torch.randn(m.n_experts) * 0.1)  # the bias takes part in the choice
    x = torch.randn(3, 7, 16)
    y, aux = m(x)
    n_tok = 3 * 7
    assert y.shape == x.shape
    assert aux.item() == 0.0
    assert m.last_stats["dropped"] == 0
    assert sum(m.last_stats["tokens_per_expert"]) == n_tok * m.top_k
    assert m.last_stats["tokens_per_expert"] == naive_counts(m, x)
    assert m.last_stats["tokens_per_expert"] == m.last_stats["routed_per_expert"]
    # top-k picks distinct experts, so each token has exactly top_k different ones
    _, idx, _ = m.route(x.reshape(-1, 16))
    assert all(len(set(row)) == m.top_k for row in idx.tolist())
    torch.testing.assert_close(y, naive_moe(m, x), atol=1e-5, rtol=0)


def test_last_stats_are_plain_ints_refreshed_each_forward():
    m = make_moe()
    m(torch.randn(1, 5, 16))
    first = m.last_stats
    m(torch.randn(2, 9, 16))
    stats = m.last_stats
    assert stats is not first
    assert all(type(v) is int for v in stats["tokens_per_expert"] + stats["routed_per_expert"])
    assert type(stats["dropped"]) is int
    assert sum(stats["tokens_per_expert"]) == 2 * 9 * m.top_k


def test_output_keeps_input_dtype():
    m = make_moe().to(torch.bfloat16)
    y, aux = m(torch.randn(2, 3, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and aux.dtype == torch.float32


def test_router_stays_float32_under_autocast():
    m = make_moe()
    x = torch.randn(5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m.gate(x)
        y, _ = m(x.unsqueeze(0))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, x @ m.gate.weight.T)
    assert y.dtype == x.dtype  # experts run in autocast's dtype; the output follows the residual stream


# ---------------------------------------------------------------------------------------------------
# Capacity


def test_capacity_drops_hand_computed_assignments():
    # cap = ceil(1.0 · 8 tokens · 2 / 4) = 4. Expert 0 is routed 5 first choices (tokens 0-4) and 3 second
    # choices (tokens 5-7): first choices take priority, so token 4's first and tokens 5-7's second
    # choices are dropped: 4 drops. Expert 1 gets exactly 4; experts 2 and 3 get 2 each.
    m = identity_router_moe(capacity_factor=1.0).train()
    assert m.capacity(8) == 4
    x = routed_input(FIRST, SECOND)
    y, _ = m(x)
    assert m.last_stats["routed_per_expert"] == [8, 4, 2, 2]
    assert m.last_stats["tokens_per_expert"] == [4, 4, 2, 2]
    assert m.last_stats["dropped"] == 4
    drop = frozenset({(4, 0), (5, 0), (6, 0), (7, 0)})
    torch.testing.assert_close(y, naive_moe(m, x, drop), atol=1e-6, rtol=0)


def test_dropped_assignments_contribute_nothing():
    # cap = ceil(0.5 · 8 · 2 / 4) = 2. Expert 0 keeps tokens 0, 1 (first choices); expert 1 keeps token 5
    # (first choice) then token 0 (earliest second choice); experts 2 and 3 keep their 2 each.
    # Token 2 loses both slots: with no shared expert its output is exactly zero (the residual carries it).
    m = identity_router_moe(capacity_factor=0.5, n_shared_experts=0).train()
    x = routed_input(FIRST, SECOND)
    y, _ = m(x)
    assert m.last_stats["tokens_per_expert"] == [2, 2, 2, 2]
    assert m.last_stats["dropped"] == 8
    drop = frozenset({(2, 0), (3, 0), (4, 0), (1, 1), (2, 1), (5, 0), (6, 0), (7, 0)})
    torch.testing.assert_close(y, naive_moe(m, x, drop), atol=1e-6, rtol=0)
    assert torch.equal(y[0, 2], torch.zeros(4))
    assert y[0, [0, 1, 3, 4, 5, 6, 7]].abs().sum(-1).gt(0).all()


def test_capacity_is_off_at_inference():
    # A token's output must not depend on its batch-mates at inference (cached decoding, batched prompts).
    m = identity_router_moe(capacity_factor=0.5).eval()
    x = routed_input(FIRST, SECOND)
    y, _ = m(x)
    assert m.last_stats["dropped"] == 0
    torch.testing.assert_close(y, naive_moe(m, x), atol=1e-6, rtol=0)
    torch.testing.assert_close(y[:, 2:3], m(x[:, 2:3])[0], atol=1e-6, rtol=0)


def test_large_capacity_drops_nothing():
    m = make_moe(capacity_factor=8.0).train()
    x = torch.randn(2, 6, 16)
    y, _ = m(x)
    assert m.last_stats["dropped"] == 0
    torch.testing.assert_close(y, naive_moe(m, x), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------
# Aux loss


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
def test_aux_loss_equals_hand_computed_value(scoring):
    # Router probabilities per token (rows) and their top-2 experts:
    #   [.4 .3 .2 .1] → 0,1   [.4 .3 .2 .1] → 0,1   [.1 .2 .3 .4] → 3,2   [.3 .4 .1 .2] → 1,0
    # f = [3, 3, 1, 1] / 8 assignments;  P = column means = [.3, .3, .2, .2]
    # aux = coef · E · Σ f_i P_i = 0.01 · 4 · (3/8·.3 + 3/8·.3 + 1/8·.2 + 1/8·.2) = 0.011
    p = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.1, 0.2]])
    if scoring == "softmax":
        x = p.log()  # softmax(log p) = p
    else:
        s = 2 * p  # sigmoid scores [.8 .6 .4 .2]...; normalised per token they are p again
        x = torch.log(s / (1 - s))
    m = identity_router_moe(router_scoring=scoring, aux_loss_coef=0.01).train()
    _, aux = m(x.unsqueeze(0))
    expected = 0.01 * 4 * (3 / 8 * 0.3 + 3 / 8 * 0.3 + 1 / 8 * 0.2 + 1 / 8 * 0.2)
    assert m.last_stats["routed_per_expert"] == [3, 3, 1, 1]
    assert aux.item() == pytest.approx(expected, rel=1e-5)


def test_aux_loss_of_a_uniform_router_is_the_coefficient():
    m = make_moe(aux_loss_coef=0.3).train()
    with torch.no_grad():
        m.gate.weight.zero_()  # every expert equally likely: P_i = 1/E, so E·Σ f_i/E = Σ f_i = 1
    _, aux = m(torch.randn(2, 5, 16))
    assert aux.item() == pytest.approx(0.3, rel=1e-6)


def test_aux_loss_is_zero_when_disabled_or_in_eval():
    m = make_moe(aux_loss_coef=0.0).train()
    _, aux = m(torch.randn(1, 4, 16))
    assert aux.item() == 0.0 and aux.dim() == 0
    m = make_moe(aux_loss_coef=0.1).eval()
    _, aux = m(torch.randn(1, 4, 16))
    assert aux.item() == 0.0


def test_aux_loss_gradient_reaches_router():
    m = make_moe(aux_loss_coef=0.1).train()
    _, aux = m(torch.randn(2, 5, 16))
    aux.backward()
    assert m.gate.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# Aux-loss-free bias balancing


def test_bias_moves_toward_underloaded_experts_in_training():
    # routed load = [8, 4, 2, 2], mean 4: bias += rate · sign(4 - load) = rate · [-1, 0, +1, +1]
    m = identity_router_moe(bias_balancing=True, bias_update_rate=0.01).train()
    m(routed_input(FIRST, SECOND))
    torch.testing.assert_close(m.gate.bias, torch.tensor([-0.01, 0.0, 0.01, 0.01]))
    assert not m.gate.bias.requires_grad
    assert "gate.bias" in m.state_dict()  # saved with the model


def test_bias_frozen_in_eval_and_when_balancing_off():
    m = identity_router_moe(bias_balancing=True).eval()
    m(routed_input(FIRST, SECOND))
    assert torch.equal(m.gate.bias, torch.zeros(4))
    m = identity_router_moe(bias_balancing=False).train()
    m(routed_input(FIRST, SECOND))
    assert torch.equal(m.gate.bias, torch.zeros(4))


def test_bias_frozen_in_training_mode_under_no_grad():
    # e.g. RL rollouts generated with the policy in train mode: not a training step
    m = identity_router_moe(bias_balancing=True).train()
    with torch.no_grad():
        m(routed_input(FIRST, SECOND))
    assert torch.equal(m.gate.bias, torch.zeros(4))


def _bias_rank(rank: int, world: int, init_file: str, out: str) -> None:
    """One gloo rank: route rank-specific tokens, save the bias after one training forward."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = identity_router_moe(bias_balancing=True, bias_update_rate=0.01).train()
        # local loads: rank 0 [2, 0, 0, 2], rank 1 [0, 1, 1, 0]
        x = routed_input([0, 0], [3, 3]) if rank == 0 else routed_input([1], [2])
        m(x)
        torch.save(m.gate.bias, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_bias_update_uses_global_load_under_torch_distributed(tmp_path):
    # rank 0 routes [2, 0, 0, 2], rank 1 routes [0, 1, 1, 0]: global load [2, 1, 1, 2], mean 1.5, so
    # both ranks must add rate · [-1, +1, +1, -1] even though rank 1 alone would see expert 3 as idle.
    import torch.multiprocessing as mp

    out = str(tmp_path / "bias")
    mp.spawn(_bias_rank, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    expected = torch.tensor([-0.01, 0.01, 0.01, -0.01])
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(f"{out}.{rank}"), expected)


def test_bias_changes_choice_but_not_weights():
    m = identity_router_moe(norm_topk_prob=False)
    x = routed_input(FIRST, SECOND).reshape(-1, 4)
    scores, _, _ = m.route(x)
    with torch.no_grad():
        m.gate.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 10.0]))  # expert 3 wins every choice
    scores2, idx, w = m.route(x)
    assert (idx == 3).any(-1).all()
    torch.testing.assert_close(scores2, scores)
    torch.testing.assert_close(w, scores.gather(1, idx))


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
def test_bias_balancing_evens_out_a_skewed_router(scoring):
    # Every token starts on expert 0 (top-1); the sign rule must spread the load without any aux loss.
    m = make_moe(bias_balancing=True, bias_update_rate=0.01, top_k=1, router_scoring=scoring).train()
    x = torch.randn(1, 64, 16)
    x[..., 0] = 1.0
    with torch.no_grad():
        m.gate.weight[0, 0] = 2.0
    m(x)
    assert m.last_stats["routed_per_expert"][0] == 64
    loads = []
    for _ in range(100):
        m(x)
        loads.append(max(m.last_stats["routed_per_expert"]))
    assert max(loads[-10:]) <= 64 // 2  # balanced would be 16 per expert
    assert m.gate.bias[0] < 0 < m.gate.bias[1:].min()


# ---------------------------------------------------------------------------------------------------
# Noisy top-k gating


def test_noisy_gating_off_in_eval():
    m = make_moe(router_noise=1.0).eval()
    x = torch.randn(2, 8, 16)
    y1, _ = m(x)
    y2, _ = m(x)
    assert torch.equal(y1, y2)
    quiet = copy.deepcopy(m)
    quiet.router_noise = 0.0
    assert torch.equal(quiet(x)[0], y1)


def test_noisy_gating_on_in_training():
    m = make_moe(router_noise=1.0).train()
    x = torch.randn(2, 8, 16)
    torch.manual_seed(1)
    y1, _ = m(x)
    torch.manual_seed(2)
    y2, _ = m(x)
    assert not torch.allclose(y1, y2)
    torch.manual_seed(1)
    y3, _ = m(x)
    assert torch.equal(y1, y3)  # noise comes from torch's RNG: seeded runs repeat
    m.router_noise = 0.0
    assert torch.equal(m(x)[0], m(x)[0])


# ---------------------------------------------------------------------------------------------------
# Shared experts


def test_shared_experts_always_contribute():
    m = make_moe(n_shared_experts=2)
    assert m.shared.w1.weight.shape == (2 * 24, 16)  # fused: hidden = n_shared · moe_ffn_hidden
    x = torch.randn(2, 5, 16)
    y, _ = m(x)
    torch.testing.assert_close(y - m.shared(x), naive_moe(m, x) - m.shared(x), atol=1e-5, rtol=0)
    with torch.no_grad():
        for e in m.experts:
            e.w2.weight.zero_()  # silence every routed expert
    y, _ = m(x)
    assert m.shared(x).abs().sum() > 0
    torch.testing.assert_close(y, m.shared(x))


def test_no_shared_expert_means_no_shared_params():
    m = make_moe(n_shared_experts=0)
    assert m.shared is None
    assert not any(n.startswith("shared.") for n, _ in m.named_parameters())


# ---------------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
def test_gradients_reach_router_through_weights(scoring):
    m = make_moe(router_scoring=scoring)
    ref = copy.deepcopy(m)
    x = torch.randn(2, 6, 16)
    target = torch.randn(2, 6, 16)
    ((m(x)[0] - target) ** 2).sum().backward()
    ((naive_moe(ref, x) - target) ** 2).sum().backward()
    assert m.gate.weight.grad.abs().sum() > 0
    torch.testing.assert_close(m.gate.weight.grad, ref.gate.weight.grad, atol=1e-5, rtol=1e-4)
    for e in range(m.n_experts):
        torch.testing.assert_close(m.experts[e].w1.weight.grad, ref.experts[e].w1.weight.grad, atol=1e-5, rtol=1e-4)


def test_unused_experts_get_zero_grads_not_none():
    # Every expert sits in the graph, so DDP works without find_unused_parameters.
    m = identity_router_moe()
    m(routed_input([0, 0], [1, 1]))[0].sum().backward()  # experts 2 and 3 see no token
    for e in (2, 3):
        for p in m.experts[e].parameters():
            assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))
    assert m.experts[0].w1.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# Errors


def test_bad_input_shape_is_a_clear_error():
    m = make_moe()
    with pytest.raises(ValueError, match=r"\[B, T, 16\].*\(2, 5, 8\)"):
        m(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"\[B, T, 16\]"):
        m(torch.randn(5, 16))


def test_dense_config_is_an_error():
    with pytest.raises(ValueError, match="n_routed_experts"):
        MoE(ModelConfig(d_model=16, n_heads=2))


# ---------------------------------------------------------------------------------------------------
# Parity with transformers' DeepSeek-V3 MoE


def copy_moe_to_deepseek_v3(ours: MoE, theirs) -> None:
    """Copy our MoE weights into transformers' DeepseekV3MoE (the name mapping, in one place).

    gate.weight → gate.weight; gate.bias → gate.e_score_correction_bias;
    experts.{e}.w1 / w3 → experts.gate_up_proj[e] = cat(w1, w3) (gate rows first, then up);
    experts.{e}.w2 → experts.down_proj[e]; shared.{w1,w3,w2} → shared_experts.{gate,up,down}_proj.
    """
    with torch.no_grad():
        theirs.gate.weight.copy_(ours.gate.weight)
        theirs.gate.e_score_correction_bias.copy_(ours.gate.bias)
        for e, ex in enumerate(ours.experts):
            theirs.experts.gate_up_proj[e].copy_(torch.cat([ex.w1.weight, ex.w3.weight], dim=0))
            theirs.experts.down_proj[e].copy_(ex.w2.weight)
        theirs.shared_experts.gate_proj.weight.copy_(ours.shared.w1.weight)
        theirs.shared_experts.up_proj.weight.copy_(ours.shared.w3.weight)
        theirs.shared_experts.down_proj.weight.copy_(ours.shared.w2.weight)


@pytest.mark.parametrize("n_shared", [1, 2])
def test_matches_transformers_deepseek_v3_moe(n_shared):
    ds = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")
    from transformers import DeepseekV3Config

    d, hidden, n_exp, k = 32, 48, 8, 3
    m = make_moe(d_model=d, n_heads=4, moe_ffn_hidden=hidden, n_routed_experts=n_exp, top_k=k,
                 n_shared_experts=n_shared, router_scoring="sigmoid", norm_topk_prob=True,
                 bias_balancing=True).eval()
    with torch.no_grad():
        m.gate.bias.copy_(torch.randn(n_exp) * 0.05)  # nonzero: it must steer the choice the same way
    hf_cfg = DeepseekV3Config(
        hidden_size=d, intermediate_size=64, moe_intermediate_size=hidden, n_routed_experts=n_exp,
        num_experts_per_tok=k, n_shared_experts=n_shared, n_group=1, topk_group=1,
        routed_scaling_factor=1.0, norm_topk_prob=True, hidden_act="silu",
    )
    theirs = ds.DeepseekV3MoE(hf_cfg).eval()
    copy_moe_to_deepseek_v3(m, theirs)
    x = torch.randn(3, 11, d)
    with torch.no_grad():
        ours_y, _ = m(x)
        their_y = theirs(x)
    assert (ours_y - their_y).abs().max().item() <= 1e-5
    assert sum(m.last_stats["tokens_per_expert"]) == 3 * 11 * k
