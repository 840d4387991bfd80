"""GGUF export, checked by llama.cpp itself (the `xllamacpp` wheel: llama.cpp's server, built in, over its HTTP API):
the file loads, llama.cpp tokenises hostile text as we do, renders our chat template, and its greedy continuation
(f32) is ours token for token with the same log-probabilities; q8_0 loads and mostly agrees.

xllamacpp is imported unconditionally: it is in the `dev` extra that .ci/run installs, so where it cannot be
imported these tests fail (a collection error) rather than skip."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import torch
import xllamacpp  # noqa: F401 - a dev dependency: no import, no pass (see the docstring)

from scratchlm.cli import main
from scratchlm.config import ConfigError, load_config
from scratchlm.engine.offline import LLM
from scratchlm.engine.sampling import SamplingParams
from scratchlm.export.gguf import export_gguf, rope_to_interleaved
from scratchlm.runs import save_run
from scratchlm.tokenizer.bpe import CHAT_TEMPLATE, Tokenizer, train_tokenizer
from run_util import random_debug_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

HOSTILE = [
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "emoji 👋🏽 family 👨‍👩‍👧 flags 🇫🇷🇯🇵 and ZWJ\u200d",
    "12345 3.14159 1,000,000 x=007 ١٢٣ ²³ Ⅻ",
    "def f(x):\n\treturn x**2  # square\n\nprint(f(12))\r\n",
    "a   b\n\n\n  c\t\t d    \n \n  trailing   ",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><|reserved_3|>",
    "<think>plan</think><tool_call>{\"a\": 1}</tool_call>",
    "I'M He'S we'll they'RE don't .Hello ,World !!!?? ...",
    "   leading spaces and ﬁ ligature and café vs cafe\u0301",
    "",
]
PROMPTS = ["床前明月光", "The answer is 42", "<|im_start|>user\nwho are you?<|im_end|>\n<|im_start|>assistant\n",
           "def add(a, b):\n    return"]
N_NEW = 16


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=1024, show_progress=False)


def make_run(path, tok_dir, *overrides, seed=0):
    """A run of a randomly initialised debug model: large init and random norms so every weight matters, rows a
    multiple of 32 so q8_0 quantizes every matrix."""
    return random_debug_run(path, tok_dir, "model.multiple_of=32", "model.vocab_size=1024", *overrides, seed=seed)[0]


class LlamaCpp:
    """llama.cpp's server on one GGUF file (in this process), spoken to over its HTTP API."""

    def __init__(self, path):
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = 128
        params.n_parallel = 1
        params.cpuparams.n_threads = 1
        params.cpuparams_batch.n_threads = 1
        params.warmup = False
        # llama.cpp keeps its KV cache in f16 and, on a CPU, flash attention rounds q to f16: both off, so that
        # f32 weights give f32 logits (with them on, log-probs differ from ours by ~5e-3)
        params.cache_type_k = params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
        params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.server = xllamacpp.Server(params)  # raises if llama.cpp refuses the file
        self.url = self.server.listening_address

    def post(self, path, body):
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def tokenize(self, text, parse_special=False):
        return self.post("/tokenize", {"content": text, "add_special": True, "parse_special": parse_special})["tokens"]

    def greedy(self, ids, n=N_NEW):
        """llama.cpp's greedy continuation of `ids`, and {step: {id: logprob}} of its top 5 at the steps it reports.

        The server reports probabilities only for tokens after which the text so far is whole UTF-8 (a token
        holding half a character has none), so the reported steps are matched to the tokens in order."""
        r = self.post("/completion", {"prompt": ids, "n_predict": n, "temperature": 0, "n_probs": 5,
                                      "ignore_eos": True, "return_tokens": True, "cache_prompt": False})
        tokens, steps, pos = r["tokens"], {}, 0
        for entry in r["completion_probabilities"]:
            while tokens[pos] != entry["id"]:
                pos += 1
            steps[pos] = {t["id"]: t["logprob"] for t in entry["top_logprobs"]}
            pos += 1
        return tokens, steps


def our_greedy(run, ids, n=N_NEW):
    """Our greedy continuation through the engine, and the log-probs of every step (full forward)."""
    llm = LLM.from_run(run, device="cpu")
    out = llm.generate([ids], SamplingParams(temperature=0.0, max_new_tokens=n))[0]
    with torch.no_grad():
        logp = torch.log_softmax(llm.model(torch.tensor([ids + out])).logits[0].float(), -1)
    return out, logp[len(ids) - 1: len(ids) - 1 + n]


@pytest.fixture(scope="module")
def dense(tmp_path_factory, tok_dir):
    """One GQA run (tied embeddings) exported as f32 and q8_0 through the CLI."""
    root = tmp_path_factory.mktemp("gguf")
    make_run(root / "run", tok_dir)
    for dtype in ("f32", "q8_0"):
        assert main(["export", "gguf", str(root / "run"), "--out", str(root / f"m-{dtype}.gguf"), "--dtype", dtype]) == 0
    return root


def test_llama_cpp_tokenises_hostile_text_as_we_do(dense, tok_dir):
    tok = Tokenizer.load(tok_dir)
    cpp = LlamaCpp(dense / "m-f32.gguf")
    from scratchlm.data.corpus import corpus_texts

    texts = HOSTILE + corpus_texts("validation")[:200]
    for text in texts:
        assert cpp.tokenize(text) == tok.encode(text), text  # control tokens in text stay text
        assert cpp.tokenize(text, parse_special=True) == tok.encode(text, allow_special=True), text
    # what llama.cpp read from the metadata: our template verbatim (not a built-in ChatML it would fall back to),
    # <|im_end|> as eos, no BOS prepended (add_special=True above added nothing)
    props = cpp.get("/props")
    assert props["chat_template"] == CHAT_TEMPLATE
    assert props["eos_token"] == "<|im_end|>" and props["model_ftype"] == "all F32"
    # the chat template travels in the file: llama.cpp renders a conversation as we do
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "床前 12 <think>"}]
    rendered = cpp.post("/apply-template", {"messages": messages})["prompt"]
    assert rendered == tok.render_chat(messages, add_generation_prompt=True)


@pytest.mark.parametrize("variant", ["gqa_tied", "mha_untied_linear_rope", "yarn"])
def test_llama_cpp_greedy_equals_ours_f32(tmp_path, dense, tok_dir, variant):
    tok = Tokenizer.load(tok_dir)
    if variant == "gqa_tied":
        run, path = dense / "run", dense / "m-f32.gguf"
    else:  # the lm_head as its own tensor and linear RoPE; YaRN's ramp and temperature (prompts reach past 8)
        run, path = tmp_path / "run", tmp_path / "m.gguf"
        rope = (("model.rope_scaling=linear", "model.rope_factor=4") if variant.endswith("linear_rope") else
                ("model.rope_scaling=yarn", "model.rope_factor=4", "model.rope_original_max_seq_len=8"))
        make_run(run, tok_dir, "model.n_kv_heads=4", "model.tie_embeddings=false", *rope, seed=1)
        export_gguf(run, path, "f32")
    cpp = LlamaCpp(path)
    for prompt in PROMPTS:
        ids = tok.encode(prompt, allow_special=True)
        theirs, their_logp = cpp.greedy(ids)
        ours, our_logp = our_greedy(run, ids)
        assert theirs == ours, prompt
        assert len(their_logp) >= N_NEW // 2, "too few steps with log-probs to compare"
        for step, top in their_logp.items():  # the same distribution, not just the same argmax
            for i, lp in top.items():
                assert abs(lp - our_logp[step, i].item()) < 1e-4, (prompt, step, i)


def test_lora_run_is_merged_into_the_gguf(tmp_path, tok_dir):
    from scratchlm.model.lora import apply_lora, lora_modules
    from scratchlm.runs import load_run

    make_run(tmp_path / "base", tok_dir)
    model, _, _ = load_run(tmp_path / "base")
    apply_lora(model, 4, 8.0, 0.0, "wq,wk,w2")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.2)
    cfg = load_config("debug", ["model.init_std=0.2", "model.multiple_of=32", "model.vocab_size=1024",
                                f"lora.base={tmp_path / 'base'}", "lora.rank=4", "lora.alpha=8", "lora.targets=wq,wk,w2"])
    save_run(tmp_path / "lora", model, cfg, tok_dir)
    export_gguf(tmp_path / "lora", tmp_path / "m.gguf")
    ids = Tokenizer.load(tok_dir).encode(PROMPTS[1])
    theirs, their_logp = LlamaCpp(tmp_path / "m.gguf").greedy(ids)
    ours, our_logp = our_greedy(tmp_path / "lora", ids)
    assert theirs == ours and ours != our_greedy(tmp_path / "base", ids)[0]  # the adapter is in the file
    for step, top in their_logp.items():
        assert all(abs(lp - our_logp[step, i].item()) < 1e-4 for i, lp in top.items())


@pytest.fixture(scope="module")
def chat_gguf(chat_run, tmp_path_factory):
    """tests/conftest.py's trained chat run, exported as f32, f16 and q8_0 (its 176-wide FFN rows fall back to f16)."""
    root = tmp_path_factory.mktemp("chat_gguf")
    for dtype in ("f32", "f16", "q8_0"):
        export_gguf(chat_run, root / f"m-{dtype}.gguf", dtype)
    return root


def test_llama_cpp_answers_our_trained_chat_run_as_we_do(chat_run, chat_gguf):
    from serve_util import CHATS

    llm = LLM.from_run(chat_run, device="cpu")
    tok = llm.tokenizer
    cpp = LlamaCpp(chat_gguf / "m-f32.gguf")
    for question, _ in CHATS:
        prompt = tok.render_chat([{"role": "user", "content": question}], add_generation_prompt=True)
        ids = tok.encode(prompt, allow_special=True)
        ours = llm.generate([ids], SamplingParams(temperature=0.0, max_new_tokens=48, stop_ids=[tok.eos_id],
                                                    keep_stop_id=True))[0]
        # the text prompt: llama.cpp parses the control tokens in it, and stops at the eos the file names
        r = cpp.post("/completion", {"prompt": prompt, "n_predict": 48, "temperature": 0, "return_tokens": True,
                                     "cache_prompt": False})
        assert r["tokens"] == ours and r["content"] == tok.decode(ours, skip_special_tokens=True), question
        assert r["stop_type"] == ("eos" if ours[-1] == tok.eos_id else "limit"), question


@pytest.mark.parametrize("dtype, max_size", [("f16", 0.55), ("q8_0", 0.45)])
def test_f16_and_q8_0_load_and_mostly_agree(chat_run, chat_gguf, dtype, max_size):
    from serve_util import CHATS

    # the size says the weights really are 16-bit / int8 with a scale per 32 values, not f32 in disguise
    assert (chat_gguf / f"m-{dtype}.gguf").stat().st_size < max_size * (chat_gguf / "m-f32.gguf").stat().st_size
    tok = Tokenizer.load(chat_run)
    cpp = LlamaCpp(chat_gguf / f"m-{dtype}.gguf")
    chats = [tok.render_chat([{"role": "user", "content": q}], add_generation_prompt=True) for q, _ in CHATS]
    counts = {"chat": [0, 0], "other": [0, 0]}  # [leading tokens that agree, tokens]
    for prompt in chats + PROMPTS:
        ids = tok.encode(prompt, allow_special=True)
        theirs, _ = cpp.greedy(ids)
        ours, _ = our_greedy(chat_run, ids)
        # up to the first disagreement: after it the two continue from different prefixes
        same = next((k for k, (a, b) in enumerate(zip(theirs, ours)) if a != b), len(ours))
        c = counts["chat" if prompt in chats else "other"]
        c[0], c[1] = c[0] + same, c[1] + len(ours)
    print(f"{dtype} vs our f32, leading greedy tokens that agree: {counts}")
    # the chats it was trained on are peaked and must survive rounding; off-distribution prompts are near ties
    assert counts["chat"][0] >= 0.9 * counts["chat"][1]
    assert sum(a for a, _ in counts.values()) >= 0.75 * sum(n for _, n in counts.values())


def test_rope_permutation_pairs_rotate_half_dims():
    # rows of one head: [x0 x1 x2 x3 | y0 y1 y2 y3] → [x0 y0 x1 y1 x2 y2 x3 y3]; heads are permuted separately
    w = np.arange(16).reshape(16, 1)
    got = rope_to_interleaved(w, n_heads=2)[:, 0].tolist()
    assert got == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


@pytest.mark.parametrize("override, field", [
    (("model.attention=mla",), "model.attention='mla'"),
    (("model.n_routed_experts=4", "model.top_k=2"), "model.n_routed_experts=4"),
    (("model.norm=dyt",), "model.norm='dyt'"),
    (("model.sliding_window=16",), "model.sliding_window=16"),
    (("model.rope_scaling=ntk", "model.rope_factor=2"), "model.rope_scaling='ntk'"),
])
def test_unsupported_configs_are_refused_naming_the_field(tmp_path, tok_dir, override, field):
    make_run(tmp_path / "run", tok_dir, *override)
    with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
        export_gguf(tmp_path / "run", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
