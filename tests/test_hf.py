"""The transformers wrapper: save/reload gives identical logits, Auto classes find it, generate() matches
our offline engine front, engine.offline.LLM (greedy, including left-padded batches)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from scratchlm.config import ConfigError, load_config  # noqa: E402
from scratchlm.engine.offline import LLM  # noqa: E402
from scratchlm.engine.sampling import SamplingParams  # noqa: E402
from scratchlm.model.hf import ScratchLMConfig, ScratchLMForCausalLM  # noqa: E402
from scratchlm.model.transformer import Transformer  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_model(*overrides: str) -> Transformer:
    torch.manual_seed(0)
    return Transformer(load_config("debug", ["model.init_std=0.2", *overrides]).model).eval()


VARIANTS = {
    "gqa": (),
    "untied": ("model.tie_embeddings=false",),
    "mla_moe": ("model.attention=mla", "model.n_routed_experts=4", "model.top_k=2", "model.n_shared_experts=1"),
    "yarn_dyt": ("model.rope_scaling=yarn", "model.rope_factor=4", "model.norm=dyt"),
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_save_reload_identical_logits(tmp_path, overrides):
    model = make_model(*overrides)
    wrapped = ScratchLMForCausalLM.from_transformer(model, eos_token_id=2, pad_token_id=0).eval()
    x = torch.tensor([[5, 17, 42, 9, 100, 3]])
    with torch.no_grad():
        assert torch.equal(wrapped(x).logits, model(x).logits)
        wrapped.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").exists()
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert isinstance(reloaded, ScratchLMForCausalLM)
        assert torch.equal(reloaded(x).logits, model(x).logits)
    tied = model.config.tie_embeddings
    assert (reloaded.model.lm_head.weight is reloaded.model.embed.weight) == tied
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "scratchlm" and saved["tie_word_embeddings"] == tied
    assert reloaded.config.to_model_config() == model.config


def test_config_round_trip_and_auto_config(tmp_path):
    cfg = load_config("debug", ["model.n_routed_experts=4", "model.top_k=3"]).model
    hf_cfg = ScratchLMConfig.from_model_config(cfg, eos_token_id=2)
    assert hf_cfg.num_experts_per_tok == 3 and hf_cfg.to_model_config() == cfg
    hf_cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ScratchLMConfig) and loaded.to_model_config() == cfg
    # the MoE top_k must not leak into sampling as a top-k filter
    assert "top_k" not in json.loads((tmp_path / "config.json").read_text())


def test_bad_config_value_is_a_clear_error():
    with pytest.raises(ConfigError, match="model.attention"):
        ScratchLMConfig(attention="linear")


def test_labels_give_the_shifted_ce_loss():
    model = make_model()
    wrapped = ScratchLMForCausalLM.from_transformer(model)
    x = torch.tensor([[5, 17, 42, 9, 100, 3]])
    targets = torch.cat([x[:, 1:], torch.full((1, 1), -100)], dim=1)
    with torch.no_grad():
        assert torch.allclose(wrapped(x, labels=x).loss, model(x, targets=targets).loss)


@pytest.mark.parametrize("overrides", [(), ("model.attention=mla",)], ids=["gqa", "mla"])
def test_transformers_generate_matches_engine_greedy(overrides):
    model = make_model(*overrides)
    wrapped = ScratchLMForCausalLM.from_transformer(model, eos_token_id=None, pad_token_id=0).eval()
    prompts = [[5, 17, 42, 9], [3, 4]]
    ours = LLM(model).generate(prompts, SamplingParams(temperature=0, max_new_tokens=10))
    for prompt, expected in zip(prompts, ours):
        out = wrapped.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)
        assert out[0, len(prompt):].tolist() == expected
    # a left-padded batch through transformers' attention_mask handling
    ids = torch.tensor([[0, 0, 3, 4], [5, 17, 42, 9]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    out = wrapped.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    assert out[:, 4:].tolist() == [ours[1], ours[0]]


def test_generate_without_cache_matches():
    model = make_model()
    wrapped = ScratchLMForCausalLM.from_transformer(model, eos_token_id=None, pad_token_id=0).eval()
    a = wrapped.generate(torch.tensor([[5, 17, 42]]), max_new_tokens=8, do_sample=False, use_cache=False)
    b = wrapped.generate(torch.tensor([[5, 17, 42]]), max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b)
