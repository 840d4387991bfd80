"""Export to transformers and back, checked with the real tools: AutoModelForCausalLM (no trust_remote_code)
loads the export and gives our logits, AutoTokenizer renders our chat template, generate() stops at
<|im_end|>, PEFT loads a LoRA run's adapter, and import(export(run)) is the run again."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from scratchlm.cli import main  # noqa: E402
from scratchlm.config import ConfigError, load_config  # noqa: E402
from scratchlm.export.hf import ADAPTER_SUBDIR, OUR_CONFIG_KEY, export_hf, import_hf  # noqa: E402
from scratchlm.model.lora import apply_lora, lora_modules  # noqa: E402
from scratchlm.model.transformer import Transformer  # noqa: E402
from scratchlm.runs import load_run, save_run  # noqa: E402
from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer  # noqa: E402
from scratchlm.model.reward import RewardModel  # noqa: E402
from run_util import random_debug_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VARIANTS = {
    "gqa": ((), "LlamaForCausalLM"),
    "mha_untied": (("model.n_kv_heads=4", "model.tie_embeddings=false"), "LlamaForCausalLM"),
    "moe": (("model.n_routed_experts=4", "model.top_k=2"), "MixtralForCausalLM"),
    "mla_qlora_yarn": (("model.attention=mla", "model.q_lora_rank=32", "model.rope_scaling=yarn", "model.rope_factor=4",
                        "model.rope_original_max_seq_len=32"), "DeepseekV3ForCausalLM"),
    "mla_moe": (("model.attention=mla", "model.n_routed_experts=4", "model.top_k=2", "model.n_shared_experts=1",
                 "model.router_scoring=sigmoid", "model.first_dense_layers=1"), "DeepseekV3ForCausalLM"),
}
IDS = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=512, show_progress=False)


def make_run(path, tok_dir, *overrides, seed=0):
    """A run folder holding a randomly initialised debug model (norm weights random, so they must map)."""
    return random_debug_run(path, tok_dir, *overrides, seed=seed)


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_loads_natively_matches_logits_and_round_trips(tmp_path, tok_dir, variant, capsys):
    overrides, cls = VARIANTS[variant]
    model, cfg = make_run(tmp_path / "run", tok_dir, *overrides)
    assert main(["export", "hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    assert cls in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [cls] and "auto_map" not in config  # nothing custom to trust
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == cls
    assert (logits(hf) - logits(model)).abs().max().item() <= 1e-4
    # import(export(run)) is the run: the same config and bit-identical weights
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back, tok, back_cfg = load_run(tmp_path / "back")
    assert back_cfg.model == cfg.model
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert tok.encode("床前明月光 hello") == Tokenizer.load(tok_dir).encode("床前明月光 hello")


def test_tokenizer_chat_template_and_generation_stop(tmp_path, tok_dir):
    model, _ = make_run(tmp_path / "run", tok_dir)
    ours = Tokenizer.load(tok_dir)
    # Relabel the vocabulary so that greedy decoding emits <|im_end|> (id 2) at step k: swapping two rows of
    # the (tied) embedding swaps two token ids everywhere and changes nothing else.
    prompt = [ours.im_start_id, *ours.encode("user\nhi")]  # no id 2 in it: the swap must not touch the prompt
    with torch.no_grad():
        free = AutoModelForCausalLM.from_pretrained(export_hf(tmp_path / "run", tmp_path / "probe")).eval()
        steps = free.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None)[0, len(prompt):].tolist()
    k = next(i for i in range(1, len(steps)) if steps[i] not in steps[:i] and steps[i] not in prompt and
             all(s not in (0, 2) for s in steps[:i + 1]))
    a, b = 2, steps[k]
    with torch.no_grad():
        w = model.embed.weight
        w[[a, b]] = w[[b, a]].clone()
    save_run(tmp_path / "run", model, load_config("debug", ["model.init_std=0.2"]), tok_dir)
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    gen = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)[0, len(prompt):].tolist()
    assert gen == steps[:k] + [2]  # stopped at <|im_end|>, from generation_config.json alone
    gcfg = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gcfg["eos_token_id"][0] == 2
    # AutoTokenizer renders and tokenizes the chat template as we do
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    chat = [{"role": "system", "content": "你是诗人。"}, {"role": "user", "content": "Write  a poem\nabout 月"},
            {"role": "assistant", "content": "床前明月光"}, {"role": "user", "content": "more"}]
    text = hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == ours.render_chat(chat, add_generation_prompt=True)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ours.encode_chat(chat, add_generation_prompt=True)[0]
    assert hf_tok.eos_token == "<|im_end|>" and hf_tok.pad_token_id == 0


def test_lora_run_exports_as_peft_adapter_or_merged(tmp_path, tok_dir):
    peft = pytest.importorskip("peft")
    _, cfg = make_run(tmp_path / "base", tok_dir)
    model, _, _ = load_run(tmp_path / "base")
    apply_lora(model, 4, 8.0, 0.0, "wq,wv,w2")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.2)
    lcfg = load_config("debug", ["model.init_std=0.2", f"lora.base={tmp_path / 'base'}", "lora.rank=4",
                                 "lora.alpha=8", "lora.targets=wq,wv,w2"])
    save_run(tmp_path / "lora", model, lcfg, tok_dir)
    expected = logits(load_run(tmp_path / "lora")[0])
    assert (expected - logits(load_run(tmp_path / "base")[0])).abs().max() > 1e-3  # the adapter matters

    out = export_hf(tmp_path / "lora", tmp_path / "hf")
    base = AutoModelForCausalLM.from_pretrained(out)
    assert (logits(base.eval()) - logits(load_run(tmp_path / "base")[0])).abs().max() <= 1e-4
    adapted = peft.PeftModel.from_pretrained(base, out / ADAPTER_SUBDIR).eval()
    assert (logits(adapted) - expected).abs().max().item() <= 1e-4
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(out / ADAPTER_SUBDIR).eval()  # base found by path
    assert (logits(auto) - expected).abs().max().item() <= 1e-4

    merged = AutoModelForCausalLM.from_pretrained(export_hf(tmp_path / "lora", out, merge=True)).eval()
    assert not (out / ADAPTER_SUBDIR).exists()  # the same folder, re-exported merged: no stale adapter left
    with pytest.raises(ConfigError, match="only merged"):
        export_hf(tmp_path / "lora", tmp_path / "custom", custom=True)
    assert (logits(merged) - expected).abs().max().item() <= 1e-4


def test_unsupported_config_names_the_field_and_custom_export_works(tmp_path, tok_dir, capsys):
    model, _ = make_run(tmp_path / "run", tok_dir, "model.norm=dyt", "model.sliding_window=16")
    assert main(["export", "hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 1
    assert "model.norm='dyt'" in capsys.readouterr().err
    make_run(tmp_path / "sw", tok_dir, "model.sliding_window=16")
    with pytest.raises(ConfigError, match="model.sliding_window=16"):
        export_hf(tmp_path / "sw", tmp_path / "x")
    make_run(tmp_path / "shared", tok_dir, "model.n_routed_experts=4", "model.n_shared_experts=1")  # minimind-moe's kind
    with pytest.raises(ConfigError, match="model.n_shared_experts=1: .*Mixtral has no shared experts"):
        export_hf(tmp_path / "shared", tmp_path / "x")
    rcfg = load_config("debug", ["train.objective=reward"])
    save_run(tmp_path / "rm", RewardModel(Transformer(rcfg.model)), rcfg, tok_dir)
    with pytest.raises(ConfigError, match="reward model"):
        export_hf(tmp_path / "rm", tmp_path / "x")
    out = export_hf(tmp_path / "run", tmp_path / "custom", custom=True)  # our registered class holds anything
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "ScratchLMForCausalLM"
    assert torch.equal(logits(hf), logits(model))
    back, _, cfg = load_run(import_hf(out, tmp_path / "back"))
    assert cfg.model == model.config and torch.equal(logits(back), logits(model))


def test_import_a_plain_llama_folder(tmp_path, tok_dir):
    # A Llama checkpoint that is not ours: config.json without our saved ModelConfig, weights in bf16.
    model, cfg = make_run(tmp_path / "run", tok_dir, "model.n_kv_heads=1", "model.rope_theta=10000",
                          "model.rope_scaling=yarn", "model.rope_factor=4", "model.rope_original_max_seq_len=32")
    out = export_hf(tmp_path / "run", tmp_path / "hf", dtype="bfloat16")
    config = json.loads((out / "config.json").read_text())
    del config[OUR_CONFIG_KEY]
    (out / "config.json").write_text(json.dumps(config))
    back, _, back_cfg = load_run(import_hf(out, tmp_path / "back"))
    assert (back_cfg.model.n_kv_heads, back_cfg.model.rope_theta, back_cfg.model.head_dim) == (1, 10000.0, 16)
    rope = ("rope_scaling", "rope_factor", "rope_original_max_seq_len", "yarn_beta_fast", "yarn_beta_slow")
    assert [getattr(back_cfg.model, f) for f in rope] == [getattr(cfg.model, f) for f in rope]
    rounded = model.state_dict()
    assert all(torch.equal(back.state_dict()[k], v.to(torch.bfloat16).float()) for k, v in rounded.items())
    config["model_type"] = "qwen3"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type='qwen3' is not importable"):
        import_hf(out, tmp_path / "nope")


@pytest.mark.parametrize("variant", ["moe", "mla_moe"])
def test_import_plain_mixtral_and_deepseek_folders(tmp_path, tok_dir, variant):
    # Their config.json alone must describe the model: our saved ModelConfig removed.
    model, cfg = make_run(tmp_path / "run", tok_dir, *VARIANTS[variant][0])
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    del config[OUR_CONFIG_KEY]
    (out / "config.json").write_text(json.dumps(config))
    back, _, back_cfg = load_run(import_hf(out, tmp_path / "back"))
    fields = ("attention", "n_routed_experts", "n_shared_experts", "top_k", "first_dense_layers", "router_scoring",
              "moe_ffn_hidden") + (("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim")
                                   if cfg.model.attention == "mla" else ("n_kv_heads",))  # what each attention uses
    assert [getattr(back_cfg.model, f) for f in fields] == [getattr(cfg.model, f) for f in fields]
    assert torch.equal(logits(back), logits(model))
