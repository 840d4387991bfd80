"""The engine: cached greedy equals naive full forwards, batching, stops, streaming, sampling filters,
speculative decoding, context errors. Tiny random `debug` models on the CPU."""

from __future__ import annotations

import pytest
import torch

from scratchlm.config import load_config
from scratchlm.engine.offline import LLM
from scratchlm.engine.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    process_logits,
    top_k_filter,
    top_p_filter,
)
from scratchlm.engine.speculative import speculative_generate, verify_proposals
from scratchlm.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


PROMPTS = [[5, 17, 42], [7], [3, 9, 11, 200, 8, 31, 64], [100, 101]]


def make_model(*overrides: str, seed: int = 0) -> Transformer:
    """A random debug-size model; larger init so that argmax changes along the sequence."""
    torch.manual_seed(seed)
    cfg = load_config("debug", ["model.init_std=0.2", *overrides]).model
    return Transformer(cfg).eval()


@pytest.fixture(scope="module")
def model() -> Transformer:
    return make_model()


class FakeTokenizer:
    """Just enough of scratchlm.tokenizer.Tokenizer for the engine: a character per id (ids 10..)."""

    eos_id = 2
    pad_id = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(ord("a") + (i % 26)) for i in ids if not (skip_special_tokens and i < 10))


@torch.no_grad()
def naive_greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """Reference: recompute the whole sequence for every token, take the argmax."""
    seq = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([seq])).logits[0, -1]
        seq.append(int(logits.argmax()))
    return seq[len(prompt):]


GREEDY = SamplingParams(temperature=0, max_new_tokens=12)


@pytest.mark.parametrize(
    "overrides",
    [(), ("model.n_kv_heads=1",), ("model.attention=mla",), ("model.norm=dyt",), ("model.sliding_window=6",)],
    ids=["gqa", "mqa", "mla", "dyt", "window"],
)
def test_cached_greedy_equals_naive_loop(overrides):
    model = make_model(*overrides)
    engine = LLM(model)
    for prompt in PROMPTS[:3]:
        assert engine.generate([prompt], GREEDY)[0] == naive_greedy(model, prompt, 12)


def test_greedy_output_is_not_trivial(model):
    # guards the other tests: a model that repeats one token would make equalities meaningless
    out = naive_greedy(model, PROMPTS[0], 12)
    assert len(set(out)) > 2


def test_batched_prompts_of_different_lengths_equal_each_alone(model):
    engine = LLM(model)
    batched = engine.generate(PROMPTS, GREEDY)
    alone = [engine.generate([p], GREEDY)[0] for p in PROMPTS]
    assert batched == alone


def test_batched_moe_equals_alone():
    model = make_model("model.n_routed_experts=4", "model.top_k=2", "model.n_shared_experts=1")
    params = SamplingParams(temperature=0, max_new_tokens=6)
    batched = LLM(model).generate(PROMPTS[:3], params)
    assert batched == [naive_greedy(model, p, 6) for p in PROMPTS[:3]]


def test_stop_ids_end_rows_and_are_not_returned(model):
    engine = LLM(model)
    full = engine.generate(PROMPTS, GREEDY)
    stop = full[0][4]  # the 5th greedy token of row 0 becomes a stop id
    params = SamplingParams(temperature=0, max_new_tokens=12, stop_ids=[stop])
    out = engine.generate(PROMPTS, params)
    for row_full, row in zip(full, out):
        cut = row_full.index(stop) if stop in row_full else len(row_full)
        assert row == row_full[:cut]  # rows that stop early do not affect the others
    kept = engine.generate(PROMPTS[:1], SamplingParams(temperature=0, max_new_tokens=12, stop_ids=[stop], keep_stop_id=True))
    assert kept[0] == full[0][: full[0].index(stop) + 1]


def test_tokenizer_eos_is_always_a_stop_id(model):
    engine = LLM(model)
    full = engine.generate([PROMPTS[0]], GREEDY)[0]
    tok = FakeTokenizer()
    tok.eos_id = full[3]
    out = LLM(model, tok).generate([PROMPTS[0]], GREEDY)[0]
    assert out == full[: full.index(full[3])]


def test_max_new_tokens(model):
    for n in (1, 5):
        out = LLM(model).generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=n))
        assert [len(r) for r in out] == [n] * len(PROMPTS)


def test_stop_strings_cut_text_and_ids(model):
    tok = FakeTokenizer()
    tok.eos_id = -1  # never sampled
    engine = LLM(model, tok)
    full = engine.generate([PROMPTS[0]], GREEDY)[0]
    text = tok.decode(full)
    stop = text[5:7]  # a two-character stop string spanning tokens 5 and 6
    out = engine.generate([PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=12, stop_strings=[stop]))[0]
    cut = text.index(stop)
    assert out == full[:cut]
    assert tok.decode(out) == text[:cut]
    assert stop not in tok.decode(out)


def test_stop_strings_need_a_tokenizer(model):
    with pytest.raises(ValueError, match="stop_strings need a tokenizer"):
        LLM(model).generate([PROMPTS[0]], SamplingParams(stop_strings=["x"]))


def test_stop_strings_hold_back_a_possible_prefix():
    from scratchlm.engine.detok import IncrementalText

    class Chars:
        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(i) for i in ids)

    s = IncrementalText(Chars(), ["END"])
    assert [s.push(ord(c)) for c in "abE"] == [("a", False), ("b", False), ("", False)]  # "E" may start "END"
    assert s.push(ord("N")) == ("", False)
    assert s.push(ord("x")) == ("ENx", False)  # not a stop string after all: released
    assert [s.push(ord(c)) for c in "yEND"] == [("y", False), ("", False), ("", False), ("", True)]
    assert s.text == "abENxy" and s.ids_before_stop(s.ids) == [ord(c) for c in "abENxy"]


@pytest.mark.parametrize("params", [GREEDY, SamplingParams(temperature=0.9, top_k=50, seed=3, max_new_tokens=12)])
def test_stream_yields_the_same_tokens_as_generate(model, params):
    engine = LLM(model)
    for prompt in PROMPTS[:2]:
        assert list(engine.stream(prompt, params)) == engine.generate([prompt], params)[0]


def test_stream_with_stop_string_equals_generate(model):
    tok = FakeTokenizer()
    tok.eos_id = -1
    engine = LLM(model, tok)
    text = tok.decode(engine.generate([PROMPTS[2]], GREEDY)[0])
    params = SamplingParams(temperature=0, max_new_tokens=12, stop_strings=[text[6:9], "zzzz"])
    assert list(engine.stream(PROMPTS[2], params)) == engine.generate([PROMPTS[2]], params)[0]


def test_seeded_sampling_is_reproducible(model):
    engine = LLM(model)
    params = SamplingParams(temperature=1.0, seed=123, max_new_tokens=16)
    a = engine.generate(PROMPTS, params)
    b = engine.generate(PROMPTS, params)
    c = engine.generate(PROMPTS, SamplingParams(temperature=1.0, seed=124, max_new_tokens=16))
    assert a == b
    assert a != c


def test_top_k_1_equals_greedy(model):
    engine = LLM(model)
    params = SamplingParams(temperature=1.5, top_k=1, seed=0, max_new_tokens=12)
    assert engine.generate(PROMPTS, params) == engine.generate(PROMPTS, GREEDY)


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15], [0.97, 0.01, 0.01, 0.01]])
    kept = torch.isfinite(top_p_filter(probs.log(), 0.8))
    # row 0: sorted 0.5, 0.3 (=0.8 reached) → keep tokens 0 and 2; row 1: the top token alone
    assert kept.tolist() == [[True, False, True, False], [True, False, False, False]]
    assert torch.isfinite(top_p_filter(probs.log(), 0.81)).sum(1).tolist() == [3, 1]
    assert torch.equal(top_p_filter(probs.log(), 1.0), probs.log())


def test_top_k_filter_keeps_k_largest():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[False, True, True, False]]


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    assert (out[seen] < logits[seen]).all() and torch.equal(out[~seen], logits[~seen])


def test_repetition_penalty_changes_generation(model):
    engine = LLM(model)
    plain = engine.generate([PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=30))[0]
    penalised = engine.generate([PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=30, repetition_penalty=100.0))[0]
    # with a huge penalty a token is repeated only once every other logit is also penalised or -inf
    assert len(set(penalised)) >= len(set(plain))
    assert len(set(penalised)) == len(penalised)


def test_greedy_ignores_sampling_filters():
    logits = torch.randn(3, 10)
    out = process_logits(logits, SamplingParams(temperature=0, top_k=2, top_p=0.1))
    assert torch.equal(out.argmax(-1), logits.argmax(-1))


def test_context_overflow_is_an_error_naming_the_prompt(model):
    engine = LLM(model)
    long_prompt = list(range(1, 121))
    with pytest.raises(ValueError, match=r"prompt 1 has 120 tokens \+ max_new_tokens=20 = 140 exceeds model.max_seq_len=128"):
        engine.generate([[1, 2], long_prompt], SamplingParams(max_new_tokens=20))
    assert len(engine.generate([long_prompt], SamplingParams(temperature=0, max_new_tokens=8))[0]) == 8


def test_bad_input_errors(model):
    engine = LLM(model)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        engine.generate([[]], GREEDY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[1, 9999]], GREEDY)
    with pytest.raises(ValueError, match="SamplingParams.top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="SamplingParams.temperature"):
        SamplingParams(temperature=-1)


def test_speculative_greedy_equals_plain_greedy(model):
    draft = make_model("model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", seed=7)
    engine = LLM(model)
    rates = []
    params = SamplingParams(temperature=0, max_new_tokens=16)
    for prompt in PROMPTS[:3]:
        plain = engine.generate([prompt], params)[0]
        for k in (1, 4):
            res = speculative_generate(model, draft, prompt, params, k=k)
            assert res.tokens == plain
            assert 0 <= res.accepted <= res.proposed
            rates.append(res.acceptance_rate)
    assert max(rates) < 1.0  # a different random draft: some proposals are rejected


def test_speculative_with_itself_accepts_everything(model):
    res = speculative_generate(model, model, PROMPTS[0], SamplingParams(temperature=0, max_new_tokens=20), k=4)
    assert res.acceptance_rate == 1.0
    assert res.target_forwards == 4  # 20 tokens in rounds of 4 proposals + 1 bonus token


def test_speculative_acceptance_gives_the_target_distribution():
    # The first emitted token of a round (a draft proposal x ~ q, accepted or replaced) must be
    # distributed as the target's p, not as the draft's q.
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.6, 0.1, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.1, 0.5, 0.2, 0.2]])
    n = 4000
    counts = torch.zeros(4)
    n_accepted = 0
    for _ in range(n):
        x = int(torch.multinomial(q[0], 1, generator=gen))
        n_ok, extra = verify_proposals(p, q, [x], greedy=False, generator=gen)
        counts[x if n_ok else extra] += 1
        n_accepted += n_ok
    assert (counts / n - p[0]).abs().max() < 0.03
    # acceptance probability = sum_x min(p(x), q(x)) = 0.1 + 0.1 + 0.2 + 0.1
    assert abs(n_accepted / n - 0.5) < 0.03


def test_speculative_greedy_verification():
    p = torch.nn.functional.one_hot(torch.tensor([3, 1, 2]), 4).float()
    q = torch.full((2, 4), 0.25)
    assert verify_proposals(p, q, [3, 1], greedy=True) == (2, 2)  # all accepted + bonus
    assert verify_proposals(p, q, [3, 0], greedy=True) == (1, 1)  # second replaced by the target's argmax


def test_speculative_sampling_is_reproducible(model):
    draft = make_model("model.n_layers=1", seed=5)
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=15, seed=11)
    a = speculative_generate(model, draft, PROMPTS[2], params, k=3)
    b = speculative_generate(model, draft, PROMPTS[2], params, k=3)
    assert a.tokens == b.tokens and len(a.tokens) == 15


def test_speculative_errors(model):
    other_vocab = make_model("model.vocab_size=256")
    with pytest.raises(ValueError, match="vocab_size"):
        speculative_generate(model, other_vocab, [1, 2], SamplingParams())
    with pytest.raises(ValueError, match="exceeds model.max_seq_len"):
        speculative_generate(model, model, [1] * 120, SamplingParams(max_new_tokens=20))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with a tiny tokenizer trained on a few lines and a random debug model."""
    from scratchlm.runs import save_run
    from scratchlm.tokenizer.bpe import train_tokenizer

    root = tmp_path_factory.mktemp("gen")
    text = root / "text.txt"
    text.write_text("\n".join(["hello world", "the cat sat on the mat", "床前明月光"] * 20), encoding="utf-8")
    tok_dir = train_tokenizer(root / "tok", vocab_size=300, inputs=[text], show_progress=False)
    cfg = load_config("debug", ["model.vocab_size=300"])
    torch.manual_seed(0)
    return save_run(root / "run", Transformer(cfg.model), cfg, tok_dir)


def test_real_tokenizer_eos_and_chat_prompt(run_dir):
    from scratchlm.runs import load_run

    model, tok, _ = load_run(run_dir)
    engine = LLM(model, tok)
    ids = engine.encode_prompt("hello", chat=True)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert tok.eos_id in engine.llm._stop_ids(SamplingParams())
    text = engine.generate_text("hello", SamplingParams(temperature=0, max_new_tokens=6), chat=True)
    assert isinstance(text, str)
    # Prompts are cleaned like the training shards: full-width punctuation folds to ASCII (NFKC).
    assert engine.encode_prompt("你好？", chat=True) == engine.encode_prompt("你好?", chat=True)
    assert tok.decode(engine.encode_prompt("你好？")) == "你好?"


@pytest.mark.parametrize("extra", [[], ["--chat", "--stream"]], ids=["plain", "chat-stream"])
def test_cli_generate(run_dir, capsys, extra):
    from scratchlm.cli import main

    from scratchlm.runs import load_run

    args = ["generate", str(run_dir), "--prompt", "hello", "--temperature", "0", "--max-new-tokens", "6", *extra]
    assert main(args) == 0
    out = capsys.readouterr().out
    model, tok, _ = load_run(run_dir)
    engine = LLM(model, tok)
    expected = engine.generate_text("hello", SamplingParams(temperature=0, max_new_tokens=6), chat="--chat" in extra)
    assert out.rstrip("\n") == expected.rstrip("\n")


def test_cli_generate_errors(tmp_path, capsys):
    from scratchlm.cli import main

    assert main(["generate", str(tmp_path / "nope"), "--prompt", "x"]) == 1
    assert "no such run folder" in capsys.readouterr().err
