"""Hand-written LoRA: zero-init identity, merge = unmerged, adapters on every path (fused, decode, MLA absorbed),
only adapters train, PEFT loads our adapter onto transformers' model and gives our logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from scratchlm.config import load_config
from scratchlm.model.lora import (
    LoRALinear,
    adapter_state,
    apply_lora,
    linear_names,
    load_adapter,
    lora_modules,
    merge_lora,
    save_adapter,
)
from scratchlm.model.transformer import Transformer

VARIANTS = {
    "gqa": (),
    "mla_moe": ("model.attention=mla", "model.n_routed_experts=4", "model.top_k=2", "model.n_shared_experts=1"),
    "mla_qlora": ("model.attention=mla", "model.q_lora_rank=16"),
}
ALL_DENSE = {"gqa": "wq,wk,wv,wo,w1,w2,w3", "mla_moe": "wq,wkv_a,wkv_b,wo,w1,w2,w3",
             "mla_qlora": "wq_a,wq_b,wkv_a,wkv_b,wo,w1,w2,w3"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(variant: str = "gqa", seed: int = 0, init_std: float = 0.2) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(load_config("debug", [f"model.init_std={init_std}", *VARIANTS[variant]]).model).eval()


def randomise_adapters(model: nn.Module, seed: int = 1) -> None:
    """Non-zero B so the adapters change the output (B starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.2)


def ids(B: int = 2, T: int = 40, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_zero_initialised_lora_leaves_logits_unchanged(variant):
    model = make(variant)
    x = ids()
    before = model(x).logits
    wrapped = apply_lora(model, rank=4, alpha=8, dropout=0.0, targets=ALL_DENSE[variant])
    assert wrapped and all(isinstance(m, LoRALinear) for m in wrapped.values())
    torch.testing.assert_close(model(x).logits, before, rtol=0, atol=1e-5)  # B = 0; only memory layouts differ


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_merged_equals_unmerged_and_unmerge_restores(variant):
    model = make(variant, init_std=0.05)  # logits of order 1, so 1e-5 is a tight bound
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=4, alpha=8, dropout=0.0, targets=ALL_DENSE[variant])
    randomise_adapters(model)
    x = ids()
    unmerged = model(x).logits
    assert (unmerged - make(variant, init_std=0.05)(x).logits).abs().max() > 1e-3  # the adapters do change the output
    for m in lora_modules(model).values():
        m.merge()
    torch.testing.assert_close(model(x).logits, unmerged, rtol=0, atol=1e-5)
    for m in lora_modules(model).values():
        m.unmerge()
    for k, v in base.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6)
    merged = merge_lora(model)  # plain linears again, same function
    assert not lora_modules(merged) and all(type(m) is not LoRALinear for m in merged.modules())
    torch.testing.assert_close(merged(x).logits, unmerged, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_adapters_hold_on_fused_decode_and_absorbed_paths(variant):
    """Cached decoding runs the small-batch (unfused) projections and, for MLA, the absorbed attention;
    the full forward runs the fused q/k/v and gate/up matmuls. With adapters on, they must agree."""
    model = make(variant)
    apply_lora(model, rank=4, alpha=8, dropout=0.0, targets=ALL_DENSE[variant])
    randomise_adapters(model)
    x = ids(B=1, T=70)  # B·T ≥ 64: the full forward takes the fused path
    full = model(x).logits
    cache = model.new_cache(1, x.shape[1])
    steps = [model(x[:, :62], cache=cache).logits]  # prefill of 62 rows: unfused
    for t in range(62, x.shape[1]):
        steps.append(model(x[:, t:t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


def test_only_adapters_get_gradients():
    model = make("gqa").train()
    apply_lora(model, rank=4, alpha=8, dropout=0.1, targets="wq,wv,w2")
    randomise_adapters(model)
    x = ids()
    model(x[:, :-1], targets=x[:, 1:]).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_state(model)) and trainable
    assert all((".lora_A." in n or ".lora_B." in n) for n in trainable)
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if p.requires_grad)


def test_unknown_target_lists_the_model_linears():
    model = make("gqa")
    assert linear_names(model) == ["w1", "w2", "w3", "wk", "wo", "wq", "wv"]
    with pytest.raises(ValueError, match=r"unknown linear name\(s\) q_proj; this model's linears are w1, w2, w3, wk, wo, wq, wv"):
        apply_lora(model, rank=4, alpha=8, dropout=0.0, targets="wq,q_proj")
    with pytest.raises(ValueError, match="rank must be at least 1"):
        apply_lora(model, rank=0, alpha=8, dropout=0.0, targets="wq")


def test_saved_adapter_reloads_to_the_same_logits(tmp_path):
    model = make("gqa")
    apply_lora(model, rank=4, alpha=8, dropout=0.0, targets="wq,wv,w1")
    randomise_adapters(model)
    x = ids()
    want = model(x).logits
    save_adapter(model, tmp_path, rank=4, alpha=8, dropout=0.0)
    fresh = make("gqa")
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(x).logits, want, rtol=0, atol=0)


def test_peft_loads_our_adapter_onto_transformers_llama(tmp_path):
    """PEFT's own loader, on transformers' LlamaForCausalLM holding our base weights, gives our logits."""
    peft = pytest.importorskip("peft")
    from scratchlm.export.hf_mapping import hf_model

    model = make("gqa")
    hf = hf_model(model)  # built from the base weights, before any adapter
    targets = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]
    apply_lora(model, rank=4, alpha=8, dropout=0.0, targets=targets)
    randomise_adapters(model)
    with torch.no_grad():  # A too: PEFT's own init must not be what makes them agree
        for m in lora_modules(model).values():
            m.lora_A.weight.mul_(1.5)
    save_adapter(model, tmp_path, rank=4, alpha=8, dropout=0.0)
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    x = ids()
    with torch.no_grad():
        theirs = peft_model(input_ids=x).logits
        ours = model(x).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# LoRA in the one training loop: any stage, adapters only in the optimizer and checkpoints, exact resume


def _base_run(tmp_path):
    """A small pretrained run to put adapters on (a few steps on a repeating token stream)."""
    import numpy as np

    from scratchlm.runs import build_model
    from scratchlm.train.loop import train
    from scratchlm.train.objectives import Pretrain
    from tests.test_train_loop import SMALL, _shards

    cfg = load_config("debug", SMALL + ["train.max_steps=3"])
    from scratchlm.runs import run_kind

    result = train(cfg, Pretrain(cfg, _shards()), tmp_path / "base", build_model(cfg), progress=False)
    # a base the adapters can sit on: a finished run, finite losses, saved as a plain (non-adapter) model
    assert result.status == "done" and len(result.losses) == 3 and np.isfinite(result.losses).all()
    assert run_kind(tmp_path / "base") == "model" and (tmp_path / "base" / "model.safetensors").exists()
    return tmp_path / "base"


def _lora_run(tmp_path, base, out, stop_at_step=None, resume=False, seed=7):
    from scratchlm.runs import build_model
    from scratchlm.train.loop import train
    from scratchlm.train.objectives import Pretrain
    from tests.test_train_loop import SMALL, _shards

    sets = SMALL + ["train.max_steps=6", "lora.rank=4", "lora.alpha=8", "lora.dropout=0.1",
                    "lora.targets=wq,wv,w1,w2", "train.lr=1e-2", "train.save_every=3", f"train.seed={seed}"]
    cfg = load_config("debug", sets)
    return train(cfg, Pretrain(cfg, _shards(seed=1)), tmp_path / out, build_model(cfg),
                 init_from=None if resume else base, resume=resume, stop_at_step=stop_at_step, progress=False)


def test_lora_training_saves_adapters_only_and_resumes_exactly(tmp_path):
    import numpy as np

    from scratchlm.runs import load_run, run_kind
    from scratchlm.train.checkpoint import latest_checkpoint, load_checkpoint

    base = _base_run(tmp_path)
    full = _lora_run(tmp_path, base, "full")
    assert full.status == "done" and full.losses[-1] < full.losses[0]
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))
    assert ckpt.model and all(".lora_A." in k or ".lora_B." in k for k in ckpt.model)  # no base weights
    assert run_kind(tmp_path / "full") == "adapter" and not (tmp_path / "full" / "model.safetensors").exists()
    first = _lora_run(tmp_path, base, "split", stop_at_step=3)
    second = _lora_run(tmp_path, base, "split", resume=True)
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=0, atol=1e-6)
    a, _, cfg = load_run(tmp_path / "full")
    b, _, _ = load_run(tmp_path / "split")
    assert cfg.lora.base == str(base.resolve()) and lora_modules(a)
    x = ids()
    torch.testing.assert_close(a(x).logits, b(x).logits, rtol=0, atol=1e-6)
    base_model, _, _ = load_run(base)
    assert (a(x).logits - base_model(x).logits).abs().max() > 1e-4  # the adapters learnt something


def test_lora_merge_command_writes_a_plain_run(tmp_path):
    from scratchlm.cli import main
    from scratchlm.runs import load_run, run_kind

    from scratchlm.tokenizer.bpe import train_tokenizer

    base = _base_run(tmp_path)
    _lora_run(tmp_path, base, "lora")
    (tmp_path / "text.txt").write_text("a tokenizer for the adapter run to hand on\n" * 20)
    train_tokenizer(tmp_path / "lora", vocab_size=300, inputs=[tmp_path / "text.txt"], show_progress=False)
    assert main(["lora", "merge", str(tmp_path / "lora"), "--out", str(tmp_path / "merged")]) == 0
    assert run_kind(tmp_path / "merged") == "model"
    merged, tok, cfg = load_run(tmp_path / "merged")
    adapted, _, _ = load_run(tmp_path / "lora")
    assert cfg.lora.rank == 0 and cfg.lora.base == "" and not lora_modules(merged)  # no trace of the adapters
    assert tok is not None  # the adapter run's tokenizer comes along
    assert (tmp_path / "merged" / "tokenizer.json").read_bytes() == (tmp_path / "lora" / "tokenizer.json").read_bytes()
    x = ids()
    torch.testing.assert_close(merged(x).logits, adapted(x).logits, rtol=0, atol=1e-5)


def test_lora_merge_refuses_a_plain_run_and_its_own_folder(tmp_path):
    from scratchlm.train.lora_merge import merge_run

    base = _base_run(tmp_path)
    with pytest.raises(ValueError, match="not a LoRA run"):
        merge_run(base, tmp_path / "merged")
    _lora_run(tmp_path, base, "lora")
    with pytest.raises(ValueError, match="choose a new folder"):
        merge_run(tmp_path / "lora", tmp_path / "lora")
    assert not (tmp_path / "merged").exists()


def test_lora_needs_a_base_run(tmp_path):
    from scratchlm.config import ConfigError
    from scratchlm.runs import build_model
    from scratchlm.train.loop import train
    from scratchlm.train.objectives import Pretrain
    from tests.test_train_loop import SMALL, _shards

    cfg = load_config("debug", SMALL + ["lora.rank=4"])
    with pytest.raises(ConfigError, match="pass --init-from RUN"):
        train(cfg, Pretrain(cfg, _shards()), tmp_path / "x", build_model(cfg), progress=False)
    with pytest.raises(ConfigError, match="lora.targets|unknown linear"):
        bad = load_config("debug", SMALL + ["lora.rank=4", "lora.targets=q_proj"])
        base = _base_run(tmp_path)
        train(bad, Pretrain(bad, _shards()), tmp_path / "y", build_model(bad), init_from=base, progress=False)


def test_runs_saved_with_the_old_lora_placeholders_still_load(tmp_path):
    """Before the [lora] section, runs saved train.lora_rank/alpha/targets: reading them drops those fields,
    while a user's own --set naming them is still an error."""
    from scratchlm.config import ConfigError, load_run_config

    cfg = load_config("debug", [])
    cfg.save(tmp_path / "config.toml")
    text = (tmp_path / "config.toml").read_text().replace("[train]\n", '[train]\nlora_rank = 8\nlora_targets = "wq,wk"\n')
    (tmp_path / "config.toml").write_text(text)
    assert load_run_config(tmp_path).lora.rank == 0
    with pytest.raises(ConfigError, match="unknown field train.'lora_rank'"):
        load_config("debug", ["train.lora_rank=8"])


# -- one LoRALinear by hand -------------------------------------------------------------------------------------
def _layer(dtype=torch.float32, device="cpu", **kw) -> LoRALinear:
    base = nn.Linear(3, 2, bias=False, dtype=dtype, device=device)
    return LoRALinear(base, rank=2, alpha=4.0, **kw)


def test_lora_linear_by_hand_merge_and_effective_weight():
    layer = _layer()
    w0 = torch.tensor([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]])
    with torch.no_grad():
        layer.weight.copy_(w0)
        layer.lora_A.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))  # [r, in]
        layer.lora_B.weight.copy_(torch.tensor([[0.5, 0.0], [0.0, -1.0]]))  # [out, r]
    assert layer.scaling == 2.0 and layer.bias is None and "merged=False" in repr(layer)
    dw = torch.tensor([[1.0, 0.0, 0.0], [0.0, -2.0, 0.0]])  # B·A·(alpha / r)
    torch.testing.assert_close(layer.delta_weight(), dw)
    x = torch.tensor([[[1.0, 2.0, 3.0]], [[0.0, -1.0, 1.0]]])  # [2, 1, in]
    want = x @ (w0 + dw).T
    torch.testing.assert_close(layer(x), want)
    torch.testing.assert_close(layer.effective_weight(), w0 + dw)
    layer.merge()
    layer.merge()  # merging twice folds the update in once
    assert "merged=True" in repr(layer)
    torch.testing.assert_close(layer.weight, w0 + dw)
    torch.testing.assert_close(layer.effective_weight(), w0 + dw)  # the update is not counted twice
    torch.testing.assert_close(layer(x), want)
    delta = layer.delta(x)  # the fused paths add delta(x) to their own matmul: zero once merged, in the right shape
    assert delta.shape == (2, 1, 2) and not delta.any()
    layer.unmerge()
    layer.unmerge()
    torch.testing.assert_close(layer.weight, w0)


def test_lora_linear_refuses_a_bias_and_defaults_to_no_dropout():
    with pytest.raises(ValueError) as e:
        LoRALinear(nn.Linear(3, 2), rank=2, alpha=4.0)
    assert str(e.value) == "LoRALinear: the model's linears are bias-free; a biased one is not supported"
    layer = _layer().train()
    x = torch.randn(64, 3)
    with torch.no_grad():
        layer.lora_B.weight.fill_(1.0)
    torch.testing.assert_close(layer.delta(x), layer.delta(x))  # no dropout by default: deterministic in training
    drop = _layer(dropout=0.5).train()
    with torch.no_grad():
        drop.lora_B.weight.fill_(1.0)
    assert not torch.equal(drop.delta(x), drop.delta(x))  # dropout 0.5 does drop inputs of the update
    assert torch.equal(drop.eval().delta(x), drop.delta(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_adapters_share_the_base_weights_dtype_and_device(dtype):
    layer = _layer(dtype=dtype)
    assert layer.lora_A.weight.dtype == layer.lora_B.weight.dtype == dtype
    assert layer(torch.ones(1, 3, dtype=dtype)).dtype == dtype
    meta = _layer(device="meta")  # the meta device stands in for an accelerator: nothing may land on the CPU
    assert meta.lora_A.weight.device.type == meta.lora_B.weight.device.type == "meta"


def test_lora_a_starts_like_an_nn_linear_weight():
    # kaiming_uniform(a=√5), as nn.Linear and PEFT: uniform in ±1/√fan_in
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 4, bias=False), rank=512, alpha=1.0)
    a = layer.lora_A.weight
    assert a.abs().max().item() <= 1 / 8 and a.abs().max().item() > 0.99 / 8
    assert not layer.lora_B.weight.any()


def test_merge_lora_leaves_a_trainable_plain_model():
    model = make("gqa")
    apply_lora(model, rank=2, alpha=4, dropout=0.0, targets="wq")
    assert not all(p.requires_grad for p in model.parameters())
    merged = merge_lora(model)
    assert all(p.requires_grad for p in merged.parameters())  # LoRA's freeze is undone
