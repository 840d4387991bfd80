"""min-p and OpenAI's frequency / presence penalties: by hand on tiny vocabularies, in the engine (over the generated
tokens only, batched rows equal to rows alone), on the CLI, and through the real server with the openai client."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch

from scratchlm.config import load_config
from scratchlm.engine.offline import LLM
from scratchlm.engine.sampling import (
    SamplingParams,
    apply_frequency_presence_penalty,
    min_p_filter,
    process_logits,
    sample,
)
from scratchlm.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------------------------------
# By hand


def test_min_p_keeps_exactly_the_tokens_at_or_above_the_threshold():
    # probabilities relative to the top one: 1, 0.5 (exactly at min_p=0.5: kept), just under 0.5, e^-5, just over
    logits = torch.tensor([[0.0, math.log(0.5), math.log(0.5) - 0.01, -5.0, math.log(0.5) + 0.01]])
    kept = torch.isfinite(min_p_filter(logits, 0.5))
    assert kept.tolist() == [[True, True, False, False, True]]
    # after temperature: at T=2 a token at 1/4 of the top probability is at 1/2 of it
    logits = torch.tensor([[0.0, math.log(0.25), math.log(0.25) - 0.01, math.log(0.5)]])
    kept = torch.isfinite(process_logits(logits, SamplingParams(temperature=2.0, min_p=0.5)))
    assert kept.tolist() == [[True, True, False, True]]
    assert torch.isfinite(process_logits(logits, SamplingParams(temperature=1.0, min_p=0.5))).tolist() == \
        [[True, False, False, True]]
    assert torch.equal(min_p_filter(logits, 0.0), logits)  # 0 = off
    # draws only ever land on kept tokens
    p = SamplingParams(temperature=2.0, min_p=0.5, seed=0)
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample(process_logits(logits, p), p, gen)) for _ in range(200)}
    assert draws == {0, 1, 3}


def test_frequency_and_presence_penalties_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    counts = torch.tensor([[0.0, 3.0, 1.0, 0.0]])  # token 1 generated three times, token 2 once
    out = apply_frequency_presence_penalty(logits, counts, 0.5, 0.25)
    assert out.tolist() == [[1.0, 2.0 - 1.5 - 0.25, 0.5 - 0.5 - 0.25, -1.0]]
    assert apply_frequency_presence_penalty(logits, counts, -0.5, 0.0).tolist() == [[1.0, 3.5, 1.0, -1.0]]
    assert apply_frequency_presence_penalty(logits, counts, 0.0, 1.0).tolist() == [[1.0, 1.0, -0.5, -1.0]]
    # on the raw logits, before temperature: (l - penalty) / T, not l / T - penalty
    p = SamplingParams(temperature=0.5, frequency_penalty=0.5, presence_penalty=0.25)
    assert process_logits(logits, p, counts=counts).tolist() == [[2.0, 0.5, -0.5, -2.0]]
    # greedy: the penalty alone moves the argmax from token 1 to token 0
    g = SamplingParams(temperature=0, frequency_penalty=0.5, presence_penalty=0.25)
    assert int(sample(process_logits(logits, g, counts=counts), g)) == 0


@pytest.mark.parametrize("field,value", [("frequency_penalty", 2.5), ("presence_penalty", -2.01), ("min_p", 1.5),
                                         ("min_p", -0.1)])
def test_out_of_range_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}="):
        SamplingParams(**{field: value})
    SamplingParams(frequency_penalty=-2, presence_penalty=2, min_p=1)  # the bounds themselves are allowed


def test_speculative_refuses_the_history_penalties():
    from scratchlm.engine.speculative import speculative_generate

    for field in ("frequency_penalty", "presence_penalty"):
        with pytest.raises(ValueError, match=f"speculative_generate: {field} is not supported"):
            speculative_generate(None, None, [1, 2], SamplingParams(**{field: 0.5}))


# ------------------------------------------------------------------------------------------------
# The engine


def make_model(seed: int = 0) -> Transformer:
    """A random debug-size model; larger init so that argmax changes along the sequence."""
    torch.manual_seed(seed)
    return Transformer(load_config("debug", ["model.init_std=0.2"]).model).eval()


@pytest.fixture(scope="module")
def model() -> Transformer:
    return make_model()


@torch.no_grad()
def naive_penalised(model: Transformer, prompt: list[int], params: SamplingParams, n: int) -> list[int]:
    """Reference: a full forward per token, counts over the generated tokens only, greedy on the processed logits."""
    seq, out = list(prompt), []
    counts = torch.zeros(1, model.config.vocab_size)
    for _ in range(n):
        logits = model(torch.tensor([seq])).logits[0, -1:].float()
        tok = int(process_logits(logits, params, counts=counts).argmax())
        counts[0, tok] += 1
        seq.append(tok)
        out.append(tok)
    return out


def test_engine_penalises_generated_tokens_only(model):
    engine = LLM(model)
    plain = engine.generate([[5, 17, 42]], SamplingParams(temperature=0, max_new_tokens=24))[0]
    # the prompt is full of the tokens the model likes here: counting it would change the first token at once
    prompt = [5, 17, 42] + plain[:12] * 3
    params = SamplingParams(temperature=0, max_new_tokens=24, frequency_penalty=2.0, presence_penalty=2.0)
    first_plain = engine.generate([prompt], SamplingParams(temperature=0, max_new_tokens=1))[0]
    penalised = engine.generate([prompt], params)[0]
    assert penalised[:1] == first_plain  # nothing generated yet: no penalty, whatever the prompt holds
    assert penalised == naive_penalised(model, prompt, params, 24)
    unpenalised = engine.generate([prompt], SamplingParams(temperature=0, max_new_tokens=24))[0]
    assert penalised != unpenalised  # the penalty did something
    assert len(set(penalised)) >= len(set(unpenalised))  # and no more repeats


def test_engine_batched_rows_equal_rows_alone(model):
    engine = LLM(model)
    prompts = [[5, 17, 42], [7], [3, 9, 11, 200, 8, 31, 64], [7, 7, 7, 7]]
    for params in (SamplingParams(temperature=0, max_new_tokens=16, frequency_penalty=1.0, presence_penalty=0.5),
                   SamplingParams(temperature=0.9, min_p=0.1, max_new_tokens=16, frequency_penalty=0.7,
                                  presence_penalty=1.5, seed=3)):
        together = engine.generate(prompts, params)
        alone = [engine.generate([p], params)[0] for p in prompts]
        assert together == alone


# ------------------------------------------------------------------------------------------------
# The CLI


def test_cli_flags_reach_sampling_params_and_help_shows_defaults(capsys):
    import argparse

    from scratchlm.engine.cli import add_sampling_args, sampling_params
    from scratchlm.engine.chat_defaults import CHAT_SAMPLING_DEFAULTS

    parser = argparse.ArgumentParser()
    add_sampling_args(parser, default_min_p=0.05, default_frequency_penalty=0.3)
    p = sampling_params(parser.parse_args(["--min-p", "0.2", "--frequency-penalty", "0.4", "--presence-penalty",
                                           "-0.5"]))
    assert (p.min_p, p.frequency_penalty, p.presence_penalty) == (0.2, 0.4, -0.5)
    d = sampling_params(parser.parse_args([]))
    assert (d.min_p, d.frequency_penalty, d.presence_penalty) == (0.05, 0.3, 0.0)
    help_text = " ".join(parser.format_help().split())
    assert "--min-p MIN_P keep tokens" in help_text and "(default: 0.05)" in help_text
    assert "(default: 0.3)" in help_text
    from scratchlm.cli import main

    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    chat_help = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]  # past the usage line
    for flag, key in [("--temperature", "temperature"), ("--top-p", "top_p"), ("--min-p", "min_p"),
                      ("--frequency-penalty", "frequency_penalty")]:
        # each flag's help line ends with the chat default
        tail = chat_help.split(flag + " ", 1)[1].split(" --", 1)[0]
        assert tail.endswith(f"(default: {CHAT_SAMPLING_DEFAULTS[key]})"), (flag, tail)


# ------------------------------------------------------------------------------------------------
# The server


@pytest.fixture(scope="module")
def server(chat_run):
    from serve_util import serving

    with serving(chat_run) as (srv, engine):
        yield srv, engine


def test_server_accepts_the_fields_and_passes_them_on(server):
    srv, engine = server
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    seen: list[SamplingParams] = []
    submit = engine.submit

    def spy(ids, params, **kw):  # the real submit, recording what the handler built
        seen.append(params)
        return submit(ids, params, **kw)

    engine.submit = spy
    try:
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=4, frequency_penalty=1.5, presence_penalty=-0.5,
                                           extra_body={"min_p": 0.1})
        assert r.choices[0].finish_reason in ("stop", "length")
        c = client.completions.create(model="tiny", prompt="hello", max_tokens=4, frequency_penalty=-2,
                                      presence_penalty=2, extra_body={"min_p": 1})
        assert c.usage.completion_tokens >= 1
    finally:
        del engine.submit
    assert [(p.frequency_penalty, p.presence_penalty, p.min_p) for p in seen] == [(1.5, -0.5, 0.1), (-2.0, 2.0, 1.0)]


@pytest.mark.parametrize("field,value", [("frequency_penalty", 2.5), ("presence_penalty", -3), ("min_p", 1.2),
                                         ("min_p", -0.1)])
def test_server_rejects_out_of_range_with_400_naming_the_field(server, field, value):
    body = {"messages": [{"role": "user", "content": "hello"}], field: value}
    r = httpx.post(server[0].url + "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["message"].startswith(f"{field}: "), err
