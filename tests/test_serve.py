"""The OpenAI-compatible server and the terminal chat, driven for real: a tiny trained chat model, the real
engine, uvicorn on a loopback port, and the official `openai` client (httpx for what the client hides)."""

import io
import threading
import time

import httpx
import openai
import pytest

from scratchlm.serve.prompt import THINK_OFF, chat_prompt_ids, chat_run_problem, fit_history
from scratchlm.serve.reasoning import ThinkSplitter, split_reasoning
from serve_util import serving

pytestmark = pytest.mark.usefixtures("one_thread")

ADD = [{"role": "user", "content": "What is 2 plus 3?"}]
CAT = [{"role": "user", "content": "Tell me about the cat."}]


# ------------------------------------------------------------------------------------------------
# Pieces without a server


@pytest.mark.parametrize("text, reasoning, content", [
    ("<think>2+3=5</think>5", "2+3=5", "5"),
    ("\n<think>a b</think>\n\nanswer <think>x", "a b", "answer <think>x"),
    ("plain answer", None, "plain answer"),
    ("<think>cut off before the end", "cut off before the end", ""),
    ("<thi", None, "<thi"),
    ("", None, ""),
])
def test_think_splitter_in_any_pieces(text, reasoning, content):
    assert split_reasoning(text) == (reasoning, content)
    for size in range(1, len(text) + 1):  # streamed in pieces of every size: the same split
        s = ThinkSplitter()
        parts = [s.feed(text[i:i + size]) for i in range(0, len(text), size)] + [s.finish()]
        assert "".join(p[0] for p in parts) == (reasoning or "")
        assert "".join(p[1] for p in parts) == content


def test_chat_prompt_thinking_off_and_history_fit(chat_run):
    from scratchlm.tokenizer.bpe import Tokenizer

    tok = Tokenizer.load(chat_run)
    on = chat_prompt_ids(tok, ADD)
    assert tok.decode(on).endswith("<|im_start|>assistant\n")
    assert chat_prompt_ids(tok, ADD, enable_thinking=False) == on + tok.encode(THINK_OFF)
    turns = [{"role": "user", "content": "one " * 20}, {"role": "assistant", "content": "two " * 20},
             {"role": "user", "content": "three"}]
    ids, dropped = fit_history(tok, "be brief", turns, 10_000)
    assert dropped == 0 and ids == chat_prompt_ids(tok, [{"role": "system", "content": "be brief"}, *turns])
    ids, dropped = fit_history(tok, "be brief", turns, 30)  # the first exchange goes, as a whole
    assert dropped == 2 and ids == chat_prompt_ids(tok, [{"role": "system", "content": "be brief"}, turns[2]])


def test_chat_run_problem_names_what_is_missing(chat_run, tmp_path):
    from scratchlm.config import load_run_config
    from scratchlm.runs import load_run, save_run

    model, tok, cfg = load_run(chat_run)
    assert chat_run_problem(chat_run, cfg, tok) is None
    cfg.train.objective = "pretrain"
    base = save_run(tmp_path / "base", model, cfg, chat_run)
    assert "pretrained base model" in chat_run_problem(base, load_run_config(base), tok)
    assert "no tokenizer.json" in chat_run_problem(base, cfg, None)
    from scratchlm.cli import main

    assert main(["chat", str(base)]) == 1  # refused before the weights load, with the same message


# ------------------------------------------------------------------------------------------------
# The server


@pytest.fixture(scope="module")
def server(chat_run):
    with serving(chat_run) as (srv, engine):
        yield srv, engine


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0].url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _metrics(url: str) -> dict[str, float]:
    lines = httpx.get(url + "/metrics").text.splitlines()
    return {k: float(v) for k, _, v in (ln.rpartition(" ") for ln in lines if ln and not ln.startswith("#"))}


def test_openai_chat_completion_reasoning_and_usage(client, chat_run):
    from scratchlm.tokenizer.bpe import Tokenizer

    r = client.chat.completions.create(model="tiny", messages=ADD, temperature=0)
    msg = r.choices[0].message
    assert (msg.content, msg.reasoning_content, msg.model_extra["reasoning"]) == ("5", "2+3=5", "2+3=5")
    assert r.choices[0].finish_reason == "stop" and r.object == "chat.completion" and r.model == "tiny"
    assert r.usage.prompt_tokens == len(chat_prompt_ids(Tokenizer.load(chat_run), ADD))
    assert r.usage.completion_tokens >= 5  # <think>, 2, +, 3, =, 5, </think>, 5 (the stop id not counted)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    off = client.chat.completions.create(model="tiny", messages=ADD, temperature=0,
                                         extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert off.choices[0].message.content == "5" and off.choices[0].message.reasoning_content is None


def test_openai_stream_equals_whole_answer_and_ends_with_usage(client):
    whole = client.chat.completions.create(model="tiny", messages=ADD, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=ADD, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "5"
    reasoning = [d.reasoning_content for d in deltas if getattr(d, "reasoning_content", None)]
    assert "".join(reasoning) == "2+3=5" and len(reasoning) > 1  # streamed token by token, not at the end
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_completions_models_logprobs_n_and_stop(client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    r = client.completions.create(model="tiny", prompt="Tell me about the cat.", max_tokens=8, temperature=0,
                                  logprobs=2)
    assert r.object == "text_completion" and r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 8 and "".join(lp.tokens) == r.choices[0].text
    # Greedy picks the most likely token: its log-prob is the top one.
    assert all(abs(max(top.values()) - chosen) < 1e-5 for top, chosen in zip(lp.top_logprobs, lp.token_logprobs))
    chat = client.chat.completions.create(model="tiny", messages=CAT, temperature=0, max_tokens=6,
                                          logprobs=True, top_logprobs=3)
    entries = chat.choices[0].logprobs.content
    assert len(entries) == 6 and all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in entries)
    stopped = client.chat.completions.create(model="tiny", messages=CAT, temperature=0, stop=["mat"])
    assert stopped.choices[0].message.content == "The cat sat on the " and stopped.choices[0].finish_reason == "stop"
    batch = client.completions.create(model="tiny", prompt=["hello", "Tell me about the cat."], n=2, max_tokens=3,
                                      temperature=0, echo=True)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]  # prompt-major: prompt i, sample j → i * n + j
    assert batch.choices[0].text.startswith("hello") and batch.choices[2].text.startswith("Tell me about the cat.")
    assert batch.choices[2].text == batch.choices[3].text  # greedy: both samples alike
    many = client.chat.completions.create(model="tiny", messages=CAT, temperature=1.0, n=3, max_tokens=5, seed=7)
    assert [c.index for c in many.choices] == [0, 1, 2] and many.usage.completion_tokens == 15
    again = client.chat.completions.create(model="tiny", messages=CAT, temperature=1.0, n=3, max_tokens=5, seed=7)
    assert [c.message.content for c in again.choices] == [c.message.content for c in many.choices]  # seeded


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"]
    return err


def test_every_error_has_its_status_and_openai_shape(server):
    url = server[0].url
    post = lambda body, **kw: httpx.post(url + "/v1/chat/completions", **({"json": body} if body is not None else {}), **kw)
    assert "not valid JSON" in _error(post(None, content=b"{not json", headers={"content-type": "application/json"}), 400)["message"]
    assert "messages" in _error(post({"model": "tiny"}), 400)["message"]
    assert "temperature" in _error(post({"messages": ADD, "temperature": "hot"}), 400)["message"]
    assert "n" in _error(post({"messages": ADD, "n": 0}), 400)["message"]
    long = [{"role": "user", "content": "hello " * 400}]
    err = _error(post({"messages": long}), 400)
    assert "256" in err["message"] and err["code"] == "context_length_exceeded"
    assert "256" in _error(post({"messages": ADD, "max_tokens": 250}), 400)["message"]
    assert _error(post({"messages": ADD, "model": "gpt-4"}), 404)["code"] == "model_not_found"
    big = b'{"messages": [{"role": "user", "content": "' + b"a" * (2 << 20) + b'"}]}'
    assert _error(post(None, content=big, headers={"content-type": "application/json"}), 413)["code"] == "body_too_large"
    # A chunked upload declares no length: counted as it arrives.
    chunks = iter([b'{"messages": [{"role": "user", "content": "', b"a" * (2 << 20), b'"}]}'])
    assert _error(post(None, content=chunks, headers={"content-type": "application/json"}), 413)
    assert _error(httpx.post(url + "/v1/completions", json={"prompt": [999999]}), 400)["param"] == "prompt"
    assert _error(httpx.get(url + "/v1/nothing"), 404)
    with pytest.raises(openai.BadRequestError, match="256"):
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).chat.completions.create(model="tiny", messages=long)


def test_api_key_is_enforced_and_a_full_queue_gets_429(chat_run):
    # max_waiting=0: every request finds the queue full, so an authorised request shows 429 at once.
    with serving(chat_run, api_key="sekret", max_waiting=0, max_num_seqs=2) as (srv, engine):
        body = {"messages": ADD}
        err = _error(httpx.post(srv.url + "/v1/chat/completions", json=body), 401)
        assert err["code"] == "invalid_api_key"
        _error(httpx.post(srv.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"}), 401)
        _error(httpx.get(srv.url + "/v1/models"), 401)
        assert httpx.get(srv.url + "/health").status_code == 200  # probes need no key
        ok = {"Authorization": "Bearer sekret"}
        assert httpx.get(srv.url + "/v1/models", headers=ok).status_code == 200
        assert _error(httpx.post(srv.url + "/v1/chat/completions", json=body, headers=ok), 429)["code"] == "queue_full"
        too_many = _error(httpx.post(srv.url + "/v1/chat/completions", json={**body, "n": 3}, headers=ok), 400)
        assert "max_num_seqs=2" in too_many["message"]  # what this engine cannot do is the request's error, not a 500
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="sekret", max_retries=0).chat.completions.create(
                model="tiny", messages=ADD)
        engine.shutdown()  # an engine that is gone: the probe and new requests say so (503), nothing hangs
        assert _error(httpx.get(srv.url + "/health"), 503)["code"] == "engine_stopped"
        assert _error(httpx.post(srv.url + "/v1/chat/completions", json=body, headers=ok), 503)["code"] == "engine_stopped"


def test_disconnect_mid_stream_frees_blocks(server, client):
    url, engine = server[0].url, server[1]
    whole = client.chat.completions.create(model="tiny", messages=CAT, temperature=0)
    full = whole.usage.completion_tokens
    assert full >= 100, "the test needs a long answer to cut"
    before = _metrics(url)["scratchlm_generation_tokens_total"]
    body = {"model": "tiny", "messages": CAT, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        for _ in range(4):  # the role chunk and a few tokens, then hang up
            next(lines)
        assert engine.stats()["blocks_used"] > 0
    deadline = time.monotonic() + 10
    while (m := _metrics(url))["scratchlm_kv_blocks_used"] or m["scratchlm_num_requests_running"]:
        assert time.monotonic() < deadline, m
        time.sleep(0.01)
    assert m["scratchlm_kv_blocks_free"] == m["scratchlm_kv_blocks_total"]
    assert m["scratchlm_generation_tokens_total"] - before < full  # cut short, not finished
    assert m["scratchlm_requests_cancelled_total"] == 1


def test_16_concurrent_greedy_streams_each_equal_alone(client, server):
    prompts = [(ADD, 0), (CAT, 0), ([{"role": "user", "content": "hello"}], 0)]
    requests = [(prompts[i % 3][0], 10 + 7 * i) for i in range(16)]  # mixed prompts and lengths

    def ask(messages, max_tokens):
        stream = client.chat.completions.create(model="tiny", messages=messages, temperature=0, stream=True,
                                                max_tokens=max_tokens)
        return "".join((c.choices[0].delta.content or "") + (getattr(c.choices[0].delta, "reasoning_content", None) or "")
                       for c in stream if c.choices)

    alone = [ask(m, k) for m, k in requests]
    together: list[str | None] = [None] * 16
    peak = 0

    def worker(i):
        together[i] = ask(*requests[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, server[1].stats()["running"])
        time.sleep(0.002)
    assert together == alone
    assert peak > 1  # they did run together
    m = _metrics(server[0].url)
    assert m["scratchlm_time_to_first_token_seconds_count"] >= 32 and m["scratchlm_time_per_output_token_seconds_count"] > 0


def test_terminal_chat_script(server, chat_run):
    from rich.console import Console

    from scratchlm.engine.sampling import SamplingParams
    from scratchlm.serve.chat import chat_loop
    from scratchlm.tokenizer.bpe import Tokenizer

    engine = server[1]
    script = iter(["What is 2 plus 3?", "/think off", "What is 2 plus 3?", "/think maybe", "/system be brief",
                   "Tell me about the cat.", "Tell me about the cat.", "/reset", "/exit", "never read"])
    out = io.StringIO()
    session = chat_loop(engine, Tokenizer.load(chat_run), SamplingParams(temperature=0, max_new_tokens=128),
                        read_line=lambda _: next(script), console=Console(file=out, width=400))
    text = out.getvalue()
    assert "thinking: 2+3=5\n5" in text  # the reasoning apart from the answer
    assert text.count("thinking:") == 1  # not after /think off
    assert "usage: /think on|off" in text and "system prompt set" in text
    assert "oldest message" in text  # two long answers do not fit 256 tokens with room for the next
    assert "conversation cleared" in text and session.turns == [] and session.system == "be brief"
    assert next(script) == "never read"  # /exit ended the loop


def test_a_request_the_engine_fails_on_gets_500_and_the_server_serves_on(chat_run):
    from tests.test_engine import FailsOnLongInputs

    with serving(chat_run) as (srv, engine):
        engine.model = FailsOnLongInputs(engine.model, limit=40)  # prefills over 40 tokens raise inside the engine
        long = [{"role": "user", "content": "What is 2 plus 3? " * 12}]
        err = _error(httpx.post(srv.url + "/v1/chat/completions", json={"messages": long}), 500)
        assert err["code"] == "request_failed" and "cannot run" in err["message"]
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json={"messages": long, "stream": True}) as r:
            assert r.status_code == 200 and '"code":"request_failed"' in r.read().decode()  # an error event
        ok = httpx.post(srv.url + "/v1/chat/completions", json={"messages": ADD})
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")
        assert httpx.get(srv.url + "/health").status_code == 200


def test_rag_db_answers_from_retrieved_chunks_and_names_them(chat_run, tmp_path):
    # `serve --rag-db`: the last user turn carries the top chunks, the response lists them (plain and streamed).
    from scratchlm.cli import main
    from scratchlm.serve.rag import RagContext

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cats.txt").write_text("The cat sat on the mat. Cats sleep sixteen hours a day.", encoding="utf-8")
    (docs / "poem.txt").write_text("床前明月光，疑是地上霜。举头望明月，低头思故乡。", encoding="utf-8")
    db = tmp_path / "docs.db"
    assert main(["rag", "index", str(docs), "--db", str(db), "--embedder", "hash", "--quiet"]) == 0

    class Recording(RagContext):  # the real retrieval, keeping the messages it built
        built: list[list[dict]] = []

        def augment(self, messages, fits):
            out = super().augment(messages, fits)
            self.built.append(out[0])
            return out

    rag = Recording(db, k=1)
    with serving(chat_run, rag=rag) as (srv, _):
        r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": CAT, "max_tokens": 8})
        assert r.status_code == 200, r.text
        assert r.json()["sources"] == ["cats.txt#0"]
        assert "[cats.txt#0] The cat sat on the mat" in rag.built[-1][-1]["content"]  # the chunk is in the user turn
        with httpx.stream("POST", srv.url + "/v1/chat/completions",
                          json={"messages": CAT, "max_tokens": 8, "stream": True}) as s:
            first = next(line for line in s.iter_lines() if line.startswith("data: "))
        assert '"sources":["' in first and "cats.txt#0" in first
    with pytest.raises(FileNotFoundError, match="no such rag database"):
        RagContext(tmp_path / "missing.db")
