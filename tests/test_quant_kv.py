"""The int8 KV cache: the paged block pool stored as int8 with a scale and midpoint per slot and head
(engine/paged_cache.py), and --kv-cache-dtype on the commands that build an engine."""

from __future__ import annotations

import pytest
import torch

from scratchlm.config import load_config
from scratchlm.engine.llm_engine import LLMEngine
from scratchlm.engine.paged_cache import PagedKVCache
from scratchlm.engine.sampling import SamplingParams
from scratchlm.runs import load_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_int8_pool_round_trip_is_bounded_per_slot_and_head():
    cfg = load_config("debug").model  # 2 KV heads of 16
    pool = PagedKVCache(cfg, num_blocks=4, block_size=4, device=torch.device("cpu"), dtype=torch.float32,
                        kv_dtype="int8")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 16, generator=g) * torch.logspace(-2, 1, 6)[:, None, None]  # slots of unequal size
    x[3:, 0] += 5 * x[3:, 0].abs().amax(-1, keepdim=True)  # off-centre vectors: all of one sign
    slots = torch.tensor([0, 3, 4, 5, 9, 15])
    pool.write(0, 0, slots, x)
    assert pool.layers[0][0].dtype == torch.int8 and pool.scales[0][0].shape == (17, 2, 2)
    back = pool.read(0, 0, None, 6, slots)
    # half a step of each slot's and head's own grid, 254 steps over [min, max] (widened by at most 2% by the bf16
    # midpoint and scale; a symmetric grid over [-max|x|, max|x|] has steps several times wider on the off-centre
    # vectors)
    bound = (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / 508
    assert back.dtype == torch.float32 and bool(((back - x).abs() <= bound * 1.02).all())
    pool.copy_block(0, 2, 4)  # copy-on-write carries the scales too
    assert torch.equal(pool.read(0, 0, 8, 4, None)[0], pool.read(0, 0, 0, 4, None)[0])
    with pytest.raises(ValueError, match="kv_cache_dtype 'fp8'"):
        PagedKVCache(cfg, 4, 4, torch.device("cpu"), torch.float32, "fp8")


def test_int8_pool_memory_and_how_many_more_blocks_fit():
    cfg = load_config("minimind-26m").model  # 2 KV heads of 64, 8 layers
    cpu = torch.device("cpu")
    fp32 = PagedKVCache(cfg, 64, 16, cpu, torch.float32).nbytes()
    int8 = PagedKVCache(cfg, 64, 16, cpu, torch.float32, "int8").nbytes()
    # per slot and head: 64 bytes + a bf16 scale and a bf16 midpoint instead of 64 × 4 bytes
    assert int8 / fp32 == pytest.approx((64 + 4) / (64 * 4))
    assert fp32 // int8 == 3  # at the same pool bytes 3.76× as many blocks, so as many more sequences


@torch.inference_mode()
def test_int8_pool_prefill_attends_to_its_own_tokens_exactly(chat_run):
    # a cold prefill caches its tokens in int8 but attends to them as computed: its logits are the fp32 pool's
    from scratchlm.engine.runner import ModelRunner

    model, tok, _ = load_run(chat_run)
    ids = torch.tensor([_chat_ids(tok, "Tell me about the cat.")])
    T = ids.shape[1]
    logits = {}
    for d in ("auto", "int8"):
        kv = ModelRunner(model, 8, 16, kv_cache_dtype=d).kv
        view = kv.batch([list(range(-(-T // 16)))], [0], [T])
        logits[d] = model(ids, cache=view).logits
    assert torch.allclose(logits["int8"], logits["auto"], atol=1e-5, rtol=0)
    # the next forward reads those tokens back rounded: close, not equal
    for d in ("auto", "int8"):
        kv = ModelRunner(model, 8, 16, kv_cache_dtype=d).kv
        model(ids[:, :-1], cache=kv.batch([[0, 1, 2, 3]], [0], [T - 1]))
        logits[d] = model(ids[:, -1:], cache=kv.batch([[0, 1, 2, 3]], [T - 1], [1])).logits
    assert not torch.equal(logits["int8"], logits["auto"])
    assert torch.allclose(logits["int8"], logits["auto"], atol=0.05, rtol=0)


def _chat_ids(tok, question):
    return tok.encode(tok.render_chat([{"role": "user", "content": question}], add_generation_prompt=True),
                      allow_special=True)


@pytest.mark.parametrize("compile", [False, True])
def test_int8_kv_cache_greedy_agrees_with_fp32(chat_run, compile):
    from serve_util import CHATS, THINK_OFF_CHATS

    model, tok, _ = load_run(chat_run)
    # the prompts the model learnt (wide margins: what a trained model's answers have). A continuation of text it
    # never saw ("hello world, the quick") sits on near-ties and did diverge after a few tokens: not a quality test.
    prompts = [_chat_ids(tok, q) for q, _ in CHATS + THINK_OFF_CHATS]
    params = SamplingParams(temperature=0.0, max_new_tokens=48)
    want = LLMEngine(model, tok).generate(prompts, params)
    engine = LLMEngine(model, tok, compile=compile, kv_cache_dtype="int8")
    assert engine.runner.kv.int8 and engine.runner.kv.layers[0][0].dtype == torch.int8
    got = engine.generate(prompts, params)
    assert got == want and sum(map(len, got)) > 60
    # n samples of one prompt fork its blocks (a partial last block is copied with its scales)
    forked = engine.generate([prompts[1]], SamplingParams(temperature=0.0, max_new_tokens=12))
    h = engine.submit(prompts[1], SamplingParams(temperature=0.0, max_new_tokens=12), n=3)
    engine.run_until_done([h])
    assert h.token_ids == [forked[0]] * 3


# ------------------------------------------------------------------------------------------------
# --kv-cache-dtype on the commands that build an engine


def test_every_engine_command_takes_the_kv_cache_flag():
    from scratchlm.cli import build_parser
    from scratchlm.engine.cli import KV_CACHE_DTYPES
    from scratchlm.engine.paged_cache import KV_DTYPES

    assert KV_CACHE_DTYPES == KV_DTYPES  # the CLI's copy (no torch at --help) is the pool's list
    parser = build_parser()
    for argv in (["generate", "RUN", "--prompt", "hi"], ["chat", "RUN"], ["serve", "RUN"], ["eval", "RUN"]):
        assert parser.parse_args(argv).kv_cache_dtype == "auto"
        assert parser.parse_args([*argv, "--kv-cache-dtype", "int8"]).kv_cache_dtype == "int8"
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--kv-cache-dtype", "fp8"])


def _metric(url: str, name: str) -> float:
    import httpx

    lines = httpx.get(url + "/metrics").text.splitlines()
    return next(float(ln.split()[-1]) for ln in lines if ln.startswith(name + " "))


def test_serve_cli_with_int8_kv_cache(chat_run):
    import openai

    from scratchlm.serve.launch import serve_process

    model, _, _ = load_run(chat_run)
    cpu = torch.device("cpu")
    want = {d: PagedKVCache(model.config, 24, 16, cpu, torch.float32, d).nbytes() for d in ("auto", "int8")}
    with serve_process(chat_run, "--num-blocks", "24", "--kv-cache-dtype", "int8") as url:
        # the pool the real `scratchlm serve` built is the int8 one: its bytes, read from /metrics
        assert _metric(url, "scratchlm_kv_cache_bytes") == want["int8"] < want["auto"] / 2
        assert _metric(url, "scratchlm_kv_blocks_total") == 24
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="run", messages=[{"role": "user", "content": "What is 2 plus 3?"}],
                                           temperature=0)
        assert r.choices[0].message.content == "5"


def test_generate_and_eval_cli_with_int8_kv_cache(chat_run, tmp_path, capsys):
    import json

    from scratchlm.cli import main
    from scratchlm.engine.offline import LLM

    assert LLM.from_run(chat_run, "cpu", kv_cache_dtype="int8").llm.kv.int8  # what generate builds
    argv = ["generate", str(chat_run), "--prompt", "What is 2 plus 3?", "--chat", "--temperature", "0",
            "--max-new-tokens", "16", "--device", "cpu"]
    assert main(argv + ["--kv-cache-dtype", "int8"]) == 0
    assert capsys.readouterr().out.strip().endswith("5")
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"prompt": "What is 2 plus 3?", "reference": "<think>2+3=5</think>5"}) + "\n")
    out = {}
    for dtype in ("auto", "int8"):
        out[dtype] = tmp_path / f"eval_{dtype}.json"
        assert main(["eval", str(chat_run), "--tasks", "gen", "--gen", str(gen), "--max-new-tokens", "16",
                     "--kv-cache-dtype", dtype, "--out", str(out[dtype])]) == 0
    got = {d: json.loads(f.read_text()) for d, f in out.items()}
    assert got["int8"]["kv_cache_dtype"] == "int8" and got["auto"]["kv_cache_dtype"] == "auto"
    assert got["int8"]["gen"] == got["auto"]["gen"]
