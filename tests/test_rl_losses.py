"""RL maths on small tensors against hand computation: group advantages (scaled / not), zero-variance groups,
k3 KL, the clipped loss with ε_low/ε_high, and each aggregation (grpo, dapo, dr_grpo, cispo)."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.train.rl_losses import group_advantages, k3_kl, policy_loss, zero_variance_groups


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # two groups of 4
    a = group_advantages(r, 4, scale=False)
    assert a.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    std = math.sqrt(((0.5**2) * 4) / 3)  # unbiased std of (1, 0, 0, 1)
    scaled = group_advantages(r, 4, scale=True)
    u = 0.5 / (std + 1e-4)
    assert scaled[:4].tolist() == pytest.approx([u, -u, -u, u])
    assert scaled[4:].tolist() == [0.0] * 4  # an all-equal group carries no signal
    assert zero_variance_groups(r, 4).tolist() == [False, True]
    with pytest.raises(ValueError, match="not \\[N·3\\]"):
        group_advantages(r, 3)


def test_k3_kl_is_zero_at_equality_and_matches_the_formula():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.5])
    k = k3_kl(logp, ref)
    assert k[0].item() == 0.0
    assert k[1].item() == pytest.approx(math.exp(0.5) - 0.5 - 1)


# Two sequences of up to 3 tokens; the second has 2 real tokens.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
OLD = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]))
NEW = torch.log(torch.tensor([[0.8, 0.5, 0.3], [0.4, 0.7, 0.9]]))  # ratios 1.6 1.0 0.6 / 0.8 1.4 (1.8 padding)
ADV = torch.tensor([1.0, -1.0])


def per_token_clipped(eps_low: float, eps_high: float) -> torch.Tensor:
    ratio = torch.exp(NEW - OLD)
    A = ADV[:, None]
    return -torch.minimum(ratio * A, ratio.clamp(1 - eps_low, 1 + eps_high) * A)


def test_clipped_loss_each_aggregation_by_hand():
    pt = per_token_clipped(0.2, 0.28)
    # row 0 (A = +1): −min(1.6, 1.28) = −1.28, −1.0, −0.6; row 1 (A = −1): −min(−0.8, −0.8) = 0.8, −min(−1.4, −1.28) = 1.4
    assert pt[0].tolist() == pytest.approx([-1.28, -1.0, -0.6]) and pt[1, :2].tolist() == pytest.approx([0.8, 1.4])
    grpo = ((-1.28 - 1.0 - 0.6) / 3 + (0.8 + 1.4) / 2) / 2
    dapo = (-1.28 - 1.0 - 0.6 + 0.8 + 1.4) / 5
    dr = (-1.28 - 1.0 - 0.6 + 0.8 + 1.4) / (2 * 4)
    for agg, want, extra in (("grpo", grpo, {}), ("dapo", dapo, {}), ("dr_grpo", dr, {"max_len": 4})):
        out = policy_loss(NEW, OLD, ADV, MASK, 0.2, 0.28, agg, **extra)
        assert out.loss.item() == pytest.approx(want, rel=1e-5), agg
    # clipped where the bound was taken: token (0, 0) (1.6 > 1.28, A > 0) only; (1, 1) with A < 0 takes −1.4 < −1.28
    assert policy_loss(NEW, OLD, ADV, MASK, 0.2, 0.28).clip_fraction == pytest.approx(1 / 5)


def test_clip_higher_lets_rare_tokens_rise_further():
    low = policy_loss(NEW, OLD, ADV, MASK, 0.2, 0.2, "dapo").loss.item()
    high = policy_loss(NEW, OLD, ADV, MASK, 0.2, 0.6, "dapo").loss.item()
    assert high == pytest.approx(low - (1.6 - 1.2) / 5)  # token (0, 0) now counts 1.6 instead of 1.2


def test_cispo_caps_the_detached_weight_and_keeps_every_token():
    logp = NEW.clone().requires_grad_(True)
    out = policy_loss(logp, OLD, ADV, MASK, 0.2, 0.28, "cispo")
    w = torch.exp(NEW - OLD).clamp(max=1.28)
    want = (-(w * ADV[:, None] * NEW) * MASK).sum() / 5
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    out.loss.backward()
    # d loss / d logp = −w·A / 5 on every real token (even the capped one), 0 on padding
    torch.testing.assert_close(logp.grad, -(w * ADV[:, None]) * MASK / 5)


def test_kl_term_and_errors():
    ref = OLD
    plain = policy_loss(NEW, OLD, ADV, MASK, agg="dapo", ref_logp=ref, beta=0.0)
    withkl = policy_loss(NEW, OLD, ADV, MASK, agg="dapo", ref_logp=ref, beta=0.1)
    kl = ((k3_kl(NEW, ref) * MASK).sum() / 5).item()
    assert plain.kl == pytest.approx(kl) and withkl.loss.item() == pytest.approx(plain.loss.item() + 0.1 * kl, rel=1e-5)
    with pytest.raises(ValueError, match="agg='ppo'; choose one of grpo, dapo, dr_grpo, cispo"):
        policy_loss(NEW, OLD, ADV, MASK, agg="ppo")


def test_kl_shaped_rewards_put_the_score_on_the_last_token():
    from scratchlm.train.rl_losses import kl_shaped_rewards

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    logp, ref = torch.full((2, 3), -1.0), torch.full((2, 3), -1.5)
    r = kl_shaped_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, beta=0.1)
    # −0.1·(−1 − (−1.5)) = −0.05 per token; the score lands on each row's last real token
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.05, 1.95], [-0.05, -1.05, 0.0]]))


def test_gae_by_hand():
    from scratchlm.train.rl_losses import gae

    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.2, 9.0]])  # 9.0 sits on padding: never read
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    g, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, g, lam)
    # row 0: δ2 = 1 − 0.7 = 0.3; δ1 = 0 + 0.9·0.7 − 0.6 = 0.03; δ0 = 0 + 0.9·0.6 − 0.5 = 0.04
    a2 = 0.3
    a1 = 0.03 + g * lam * a2
    a0 = 0.04 + g * lam * a1
    # row 1: δ1 = 2 − 0.2 = 1.8 (nothing after it); δ0 = 0 + 0.9·0.2 − 0.1 = 0.08
    b1 = 1.8
    b0 = 0.08 + g * lam * b1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]))
    torch.testing.assert_close(ret, (adv + values) * mask)


def test_whiten_and_clipped_value_loss_by_hand():
    from scratchlm.train.rl_losses import value_loss, whiten

    x, mask = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(whiten(x, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    v, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 1.0]])
    # token 0: unclipped (1 − 2)² = 1, clipped V = 0.7 → (0.7 − 2)² = 1.69: max 1.69; token 1: 1 and 1
    want = 0.5 * (1.69 + 1.0) / 2
    assert value_loss(v, old, ret, torch.ones(1, 2), clip=0.2).item() == pytest.approx(want)


def test_per_token_advantages_by_hand():
    # PPO's GAE gives one advantage per token: [B, T] broadcasts token by token instead of per row.
    adv = torch.tensor([[1.0, -1.0, 2.0], [0.5, -2.0, 9.0]])  # (1, 2) is padding
    out = policy_loss(NEW, OLD, adv, MASK, 0.2, 0.2, "dapo")
    # ratios 1.6 1.0 0.6 / 0.8 1.4, ε = 0.2: row 0: −min(1.6·1, 1.2·1) = −1.2, −min(−1, −1) = 1.0,
    # −min(0.6·2, 0.8·2) = −1.2; row 1: −min(0.8·0.5, 0.8·0.5) = −0.4, −min(1.4·−2, 1.2·−2) = 2.8
    want = (-1.2 + 1.0 - 1.2 - 0.4 + 2.8) / 5
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert out.clip_fraction == pytest.approx(1 / 5)  # only token (0, 0) takes the bound
    same = policy_loss(NEW, OLD, ADV[:, None].expand(2, 3), MASK, 0.2, 0.28, "grpo")
    assert same.loss.item() == pytest.approx(policy_loss(NEW, OLD, ADV, MASK, 0.2, 0.28, "grpo").loss.item())


def test_group_advantages_defaults_and_small_groups():
    r = torch.tensor([3.0, 1.0, 5.0, 5.0])
    # scale=True by default: (±1) / (unbiased std √2 + 1e-4) for the group (3, 1); the group (5, 5) gives 0
    u = 1.0 / (math.sqrt(2.0) + 1e-4)
    assert group_advantages(r, 2).tolist() == pytest.approx([u, -u, 0.0, 0.0])
    assert group_advantages(r, 2, scale=False).tolist() == [1.0, -1.0, 0.0, 0.0]
    # one completion per prompt: no spread to divide by (its std is NaN); the advantage is 0, not NaN
    assert group_advantages(r, 1).tolist() == [0.0] * 4


def test_single_token_and_empty_rows_are_averaged_over_real_tokens():
    # row 0 has one real token, row 1 none: GRPO's per-row mean divides by max(count, 1), so row 1 adds 0
    logp = torch.log(torch.tensor([[0.6, 0.5], [0.5, 0.5]]))
    old = torch.log(torch.full((2, 2), 0.5))
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    adv = torch.tensor([1.0, 1.0])
    for agg, want in (("grpo", -1.2 / 2), ("dapo", -1.2), ("cispo", -1.2 * math.log(0.6))):
        out = policy_loss(logp, old, adv, mask, 0.2, 0.28, agg, ref_logp=old)
        assert out.loss.item() == pytest.approx(want, rel=1e-5), agg
        assert out.clip_fraction == 0.0  # ratio 1.2 is inside (0.8, 1.28)
        assert out.kl == pytest.approx(math.exp(math.log(0.5) - math.log(0.6)) - (math.log(0.5) - math.log(0.6)) - 1,
                                       rel=1e-5)  # k3 of the one real token, over one token
    # one token whose ratio is clipped: the fraction is 1 / 1
    assert policy_loss(logp, old, adv, mask, 0.1, 0.1, "dapo").clip_fraction == 1.0


def test_defaults_clip_at_0_2_without_kl():
    # the defaults are ε_low = ε_high = 0.2, β = 0, agg "grpo"
    logp = torch.log(torch.tensor([[0.8, 0.2]]))
    old = torch.log(torch.tensor([[0.5, 0.5]]))  # ratios 1.6 and 0.4
    adv = torch.tensor([[1.0, -1.0]])  # per token
    out = policy_loss(logp, old, adv, torch.ones(1, 2), ref_logp=old)
    # token 0: −min(1.6, 1.2) = −1.2; token 1 (A < 0): −min(−0.4, −0.8) = 0.8 (the lower bound is taken)
    assert out.loss.item() == pytest.approx((-1.2 + 0.8) / 2, rel=1e-5)
    assert out.clip_fraction == 1.0
    assert out.kl > 0  # measured, but with β = 0 not in the loss


def test_lower_clip_bound_binds_on_negative_advantages():
    logp, old = torch.log(torch.tensor([[0.25]])), torch.log(torch.tensor([[0.5]]))  # ratio 0.5
    out = policy_loss(logp, old, torch.tensor([-2.0]), torch.ones(1, 1), 0.2, 0.2, "dapo")
    assert out.loss.item() == pytest.approx(0.8 * 2.0, rel=1e-5)  # −min(0.5·(−2), 0.8·(−2)) = 1.6
    assert out.clip_fraction == 1.0


def test_cispo_weights_by_the_advantage_and_counts_only_ratios_above_the_cap():
    adv = torch.tensor([2.0, -0.5])
    out = policy_loss(NEW, OLD, adv, MASK, 0.2, 0.28, "cispo")
    w = torch.exp(NEW - OLD).clamp(max=1.28)
    want = (-(w * adv[:, None] * NEW) * MASK).sum() / 5
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    # ratios 1.6 1.0 0.6 / 0.8 1.4: two are above 1.28 (a ratio below 1 is never "clipped" by CISPO)
    assert out.clip_fraction == pytest.approx(2 / 5)
    # a ratio of exactly 1 + ε_high is at the cap, not above it
    assert policy_loss(OLD, OLD, adv, MASK, 0.2, 0.0, "cispo").clip_fraction == 0.0


def test_losses_follow_the_log_probs_dtype():
    # bf16 log-probs with float32 masks, advantages and scores: every result stays bf16
    bf = torch.bfloat16
    out = policy_loss(NEW.to(bf), OLD.to(bf), ADV, MASK, agg="dapo")
    assert out.loss.dtype == bf
    from scratchlm.train.rl_losses import gae, kl_shaped_rewards, value_loss, whiten

    r = kl_shaped_rewards(torch.tensor([2.0, -1.0]), NEW.to(bf), OLD.to(bf), MASK, beta=0.1)
    assert r.dtype == bf
    adv, ret = gae(r, NEW.to(bf), MASK)
    assert adv.dtype == bf and ret.dtype == bf
    assert whiten(NEW.to(bf), MASK).dtype == bf
    assert value_loss(NEW.to(bf), OLD.to(bf), NEW.to(bf), MASK).dtype == bf


def test_gae_defaults_and_device():
    from scratchlm.train.rl_losses import gae

    rewards, values = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.25]])
    adv, _ = gae(rewards, values, torch.ones(1, 2))  # γ = 1, λ = 0.95
    a1 = 1.0 - 0.25
    a0 = (0.0 + 0.25 - 0.5) + 0.95 * a1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1]]))
    # every tensor it makes lives on the inputs' device (the meta device stands in for an accelerator here)
    meta = gae(rewards.to("meta"), values.to("meta"), torch.ones(1, 2, device="meta"))
    assert meta[0].device.type == "meta" and meta[1].device.type == "meta"


def test_whiten_by_hand_constant_and_single_entries():
    from scratchlm.train.rl_losses import whiten

    x, mask = torch.tensor([[0.0, 4.0, 7.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(whiten(x, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)  # mean 2, std 2
    # eps is added to the variance: 4 + 12 = 16 → (x − 2) / 4
    torch.testing.assert_close(whiten(x, mask, eps=12.0), torch.tensor([[-0.5, 0.5, 0.0]]))
    # all-equal entries (variance 0) and a single entry whiten to 0, not NaN
    assert whiten(torch.full((1, 3), 5.0), torch.ones(1, 3)).tolist() == [[0.0, 0.0, 0.0]]
    assert whiten(torch.tensor([[5.0, 9.0]]), torch.tensor([[1.0, 0.0]])).tolist() == [[0.0, 0.0]]


def test_value_loss_both_clip_directions_and_the_unclipped_branch():
    from scratchlm.train.rl_losses import value_loss

    old = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    v = torch.tensor([[1.1, 0.5, 2.0, 1.0, 9.0]])  # moves +0.1 (inside the clip), −0.5, +1.0; (0, 4) is padding
    ret = torch.tensor([[2.0, 1.0, 1.0, 4.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    # token 0: V inside the range, (1.1 − 2)² = 0.81 both ways; token 1: clipped V = 0.8 → max(0.25, 0.04) = 0.25;
    # token 2: clipped V = 1.2 → max(1, 0.04) = 1 (the unclipped term wins); token 3: max(9, 9) = 9
    want = 0.5 * (0.81 + 0.25 + 1.0 + 9.0) / 4
    assert value_loss(v, old, ret, mask).item() == pytest.approx(want, rel=1e-5)  # default clip 0.2
    # a value that fell below the range is clipped up: V = 0.5 → 0.8, return 0: max(0.25, 0.64) = 0.64
    low = value_loss(torch.tensor([[0.5]]), torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.ones(1, 1), clip=0.2)
    assert low.item() == pytest.approx(0.5 * 0.64, rel=1e-5)
    # with the default clip (0.2) the clipped term wins when V overshoots the return: V_old 0, V 1, R 0.9 → clipped
    # V 0.2: ½ · max(0.01, 0.49)
    over = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[0.9]]), torch.ones(1, 1))
    assert over.item() == pytest.approx(0.5 * 0.49, rel=1e-5)
    # a single real token is its own mean
    one = value_loss(torch.tensor([[3.0, 0.0]]), torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 0.0]]),
                     torch.tensor([[1.0, 0.0]]))
    assert one.item() == pytest.approx(0.5 * 4.0)
