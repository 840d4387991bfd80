"""LLMEngine: paged decoding equals contiguous decoding, batched equals alone, blocks never leak (finished,
cancelled, preempted), prefix caching, n samples from one prefill, logprobs, incremental stop strings, async
callers, clear errors. Tiny random `debug` models on the CPU."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from scratchlm.engine import EngineFull, LLMEngine, PromptTooLong
from scratchlm.engine.blocks import BlockPool, NoFreeBlocks, block_hash
from scratchlm.engine.detok import IncrementalText
from scratchlm.engine.offline import LLM
from scratchlm.engine.sampling import SamplingParams
from tests.test_generate import FakeTokenizer, make_model, naive_greedy

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

GREEDY = SamplingParams(temperature=0, max_new_tokens=12)


def prompts(n: int, seed: int = 0, lo: int = 3, hi: int = 40) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, 250) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


def assert_pool_whole(engine: LLMEngine) -> None:
    """Every block is back: none held, every reference count zero."""
    pool = engine.pool
    assert pool.num_free() == pool.num_blocks and not any(pool.refs), engine.stats()


@pytest.mark.parametrize(
    "overrides",
    [(), ("model.n_kv_heads=1",), ("model.attention=mla",), ("model.sliding_window=6",), ("model.n_routed_experts=4",
                                                                                           "model.top_k=2")],
    ids=["gqa", "mqa", "mla", "window", "moe"],
)
@pytest.mark.parametrize("scattered", [True, False], ids=["scattered", "consecutive"])
def test_paged_logits_equal_uncached_forward_for_rows_of_different_lengths(overrides, scattered):
    # The core equivalence: rows at their own positions, keys gathered from scattered blocks (or, for one row
    # on consecutive blocks, read in place).
    model = make_model(*overrides)
    eng = LLMEngine(model, block_size=4, num_blocks=64)
    seqs = prompts(3, lo=5, hi=20)
    if scattered:
        random.Random(1).shuffle(eng.pool.free_ids)
    blocks = [[eng.pool.allocate() for _ in range(-(-len(s) // 4))] for s in seqs]
    with torch.no_grad():
        first = [len(s) - 3 for s in seqs]  # prefill all but 3 tokens, row by row, then 3 batched steps
        for s, b, n in zip(seqs, blocks, first):
            model(torch.tensor([s[:n]]), cache=eng.kv.batch([b], [0], [n]))
        for step in range(3):
            view = eng.kv.batch(blocks, [n + step for n in first], [1, 1, 1])
            ids = torch.tensor([[s[n + step]] for s, n in zip(seqs, first)])
            got = model(ids, cache=view).logits[:, -1]
            alone = model(ids[:1], cache=eng.kv.batch(blocks[:1], [first[0] + step], [1])).logits[0, -1]
            for i, s in enumerate(seqs):
                want = model(torch.tensor([s[: first[i] + step + 1]])).logits[0, -1]
                torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(alone, got[0], rtol=1e-4, atol=1e-4)


def naive_sampled(model: torch.nn.Module, prompt: list[int], n: int, temperature: float, top_k: int,
                  seed: int) -> list[int]:
    """Reference without the engine: a plain forward over the whole sequence for every token, temperature and
    top-k written out here, one multinomial draw from a generator seeded with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    seq = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([seq])).logits[0, -1].float() / temperature
        kth = torch.topk(logits, top_k).values[-1]
        probs = torch.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
        seq.append(int(torch.multinomial(probs, 1, generator=gen)))
    return seq[len(prompt):]


@pytest.mark.parametrize("overrides", [(), ("model.attention=mla",), ("model.sliding_window=6",)], ids=["gqa", "mla", "window"])
def test_engine_greedy_equals_the_naive_loop_for_every_row(overrides):
    model = make_model(*overrides)
    ps = prompts(5)  # lengths 3..39, mixed: rows prefill and decode at different positions in one batch
    assert len({len(p) for p in ps}) == len(ps)
    got = LLMEngine(model, block_size=4).generate(ps, GREEDY)
    with torch.no_grad():
        assert got == [naive_greedy(model, p, 12) for p in ps]


def test_engine_seeded_sampling_equals_the_naive_loop_for_every_row():
    model = make_model()
    ps = prompts(4, seed=3)
    assert len({len(p) for p in ps}) == len(ps)
    params = SamplingParams(temperature=0.8, top_k=20, max_new_tokens=10, seed=11)
    got = LLMEngine(model, block_size=4).generate(ps, params)
    with torch.no_grad():
        want = [naive_sampled(model, p, 10, 0.8, 20, seed=11) for p in ps]
    assert got == want and got != [naive_greedy(model, p, 10) for p in ps]  # really sampled, not argmax


def test_sixteen_together_equal_each_alone_and_blocks_come_back():
    model = make_model()
    ps = prompts(16, seed=3)
    eng = LLMEngine(model, block_size=8)
    together = eng.generate(ps, GREEDY)
    assert together == [eng.generate([p], GREEDY)[0] for p in ps]
    assert len({tuple(t) for t in together}) > 1  # not one degenerate answer
    assert_pool_whole(eng)


def test_preemption_recomputes_and_equals_the_unpreempted_output():
    model = make_model()
    ps = prompts(6, seed=5, lo=20, hi=30)
    long = SamplingParams(temperature=0, max_new_tokens=40)
    want = LLMEngine(model, block_size=8).generate(ps, long)
    small = LLMEngine(model, block_size=8, num_blocks=16)  # 128 slots: one sequence of max_seq_len, not six
    assert small.generate(ps, long) == want
    assert small.preemptions > 0
    assert_pool_whole(small)


def test_cancel_frees_blocks_and_ends_with_abort():
    model = make_model()
    eng = LLMEngine(model, block_size=4)
    keep = eng.submit(prompts(1)[0], SamplingParams(temperature=0, max_new_tokens=30))
    gone = eng.submit(prompts(1, seed=9)[0], SamplingParams(temperature=0, max_new_tokens=30))
    eng.step()
    eng.step()
    assert eng.stats()["running"] == 2 and eng.pool.num_used() > 0
    gone.cancel()
    eng.step()
    assert gone.finish_reasons == ["abort"] and eng.stats()["running"] == 1
    events = list(keep)
    assert events[-1].finish_reason == "length" and len(keep.token_ids[0]) == 30
    assert_pool_whole(eng)


def test_prefix_caching_shares_full_blocks_and_changes_nothing():
    model = make_model()
    system = prompts(1, seed=11, lo=30, hi=31)[0]
    turns = [system + [20 + i, 30 + i, 40 + i] for i in range(3)]
    cached = LLMEngine(model, block_size=8)
    plain = LLMEngine(model, block_size=8, prefix_caching=False)
    got = [cached.generate([t], GREEDY)[0] for t in turns]
    assert got == [plain.generate([t], GREEDY)[0] for t in turns]
    # turns 2 and 3 reuse the 3 full blocks of the 30-token system prompt; prefilled prompt tokens are all counted
    assert cached.pool.hits == 6 and plain.pool.hits == 0
    assert cached.stats()["prompt_tokens_total"] == sum(map(len, turns))
    assert_pool_whole(cached)


def test_n_samples_share_one_prefill():
    model = make_model()
    p = prompts(1, seed=2, lo=13, hi=14)[0]  # 13 tokens: one full block of 8 shared, the partial one copied
    eng = LLMEngine(model, block_size=8)
    h = eng.submit(p, SamplingParams(temperature=1.0, max_new_tokens=10, seed=7), n=4)
    list(h)
    assert len({tuple(t) for t in h.token_ids}) > 1  # different samples
    assert eng.stats()["prompt_tokens_total"] == 13  # one prefill for all four
    again = eng.submit(p, SamplingParams(temperature=1.0, max_new_tokens=10, seed=7), n=4)
    list(again)
    assert again.token_ids == h.token_ids  # seeded: sample i uses seed + i
    g = eng.submit(p, SamplingParams(temperature=0, max_new_tokens=10), n=2)
    list(g)
    assert g.token_ids[0] == g.token_ids[1] == naive_greedy(model, p, 10)
    assert_pool_whole(eng)


def test_logprobs_are_the_models_own():
    model = make_model()
    p = prompts(1, seed=4)[0]
    h = LLMEngine(model).submit(p, SamplingParams(temperature=1.0, max_new_tokens=6, seed=0), logprobs=True,
                                top_logprobs=3)
    events = [e for e in h if e.token_id is not None]
    ids = torch.tensor([p + h.token_ids[0]])
    with torch.no_grad():
        want = model.token_logprobs(ids[:, :-1], ids[:, 1:])[0, len(p) - 1:]
    torch.testing.assert_close(torch.tensor([e.logprob for e in events]), want, rtol=1e-4, atol=1e-4)
    for e in events:
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0][1] >= e.logprob - 1e-5


def test_stop_strings_cut_the_text_and_ids_like_the_contiguous_engine():
    model = make_model()
    tok = FakeTokenizer()
    p = [5, 17, 42]
    free = LLM(model, tok).generate([p], GREEDY)[0]
    text = tok.decode(free, skip_special_tokens=True)
    stop = text[4:6]
    params = SamplingParams(temperature=0, max_new_tokens=12, stop_strings=[stop])
    eng = LLMEngine(model, tok)
    h = eng.submit(p, params)
    streamed = "".join(e.text for e in h)
    assert streamed == text[: text.find(stop)] and h.finish_reasons == ["stop"]
    assert h.token_ids[0] == LLM(model, tok).generate([p], params)[0]


def test_incremental_text_equals_whole_decode_and_holds_back_stop_prefixes(tmp_path):
    from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer

    src = tmp_path / "t.txt"
    src.write_text("床前明月光，疑是地上霜。 hello world, the cat sat.\n" * 30, encoding="utf-8")
    tok = Tokenizer.load(train_tokenizer(tmp_path / "tok", vocab_size=300, inputs=[src], show_progress=False))
    text = "举头望明月，低头思故乡。 the cat sat on the mat"
    ids = tok.encode(text)
    inc = IncrementalText(tok)
    assert "".join(inc.push(i)[0] for i in ids) + inc.flush() == tok.decode(ids)
    inc = IncrementalText(tok, ["the mat", "思故乡X"])
    out, stopped = "", False
    for i in ids:
        delta, stopped = inc.push(i)
        out += delta
        if stopped:
            break
    assert stopped and out == "举头望明月，低头思故乡。 the cat sat on "
    kept = inc.ids_before_stop(ids)  # the most tokens whose text lies wholly before the stop string
    assert out.startswith(tok.decode(kept)) and len(tok.decode(ids[: len(kept) + 1])) > len(out)


def test_async_callers_and_background_loop():
    model = make_model()
    eng = LLMEngine(model, block_size=8)
    ps = prompts(6, seed=8)
    want = LLMEngine(model, block_size=8).generate(ps, GREEDY)
    eng.start()
    try:
        async def one(p):
            h = eng.submit(p, GREEDY)
            return [e.token_id async for e in h.aiter() if e.token_id is not None]

        async def all_():
            return await asyncio.gather(*(one(p) for p in ps))

        assert asyncio.run(all_()) == want
        assert eng.generate(ps[:2], GREEDY) == want[:2]  # the blocking API with the loop running
    finally:
        eng.shutdown()
    assert_pool_whole(eng)


def test_errors_name_the_limit():
    model = make_model()
    eng = LLMEngine(model, max_waiting=2)
    with pytest.raises(PromptTooLong, match="context is 128 tokens"):
        eng.submit([5] * 128, GREEDY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.submit([5, 99999], GREEDY)
    with pytest.raises(ValueError, match="empty"):
        eng.submit([], GREEDY)
    with pytest.raises(ValueError, match="n=17 must be between 1 and max_num_seqs=16"):
        eng.submit([5], GREEDY, n=17)
    with pytest.raises(ValueError, match="need a tokenizer"):
        eng.submit([5], SamplingParams(stop_strings=["x"]))
    eng.submit([5], GREEDY)
    eng.submit([6], GREEDY)
    with pytest.raises(EngineFull, match="max_waiting=2"):
        eng.submit([7], GREEDY)
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        LLMEngine(model, block_size=8, num_blocks=4)
    batch = LLMEngine(model)
    with pytest.raises(ValueError, match="generate: prompt 1: .*outside the vocabulary"):
        batch.generate([[5, 6], [5, 99999]], GREEDY)
    assert batch.stats()["waiting"] == batch.stats()["running"] == 0  # prompt 0 was not left queued
    assert batch.generate([[5, 6]], GREEDY) == LLMEngine(model).generate([[5, 6]], GREEDY)


def test_block_pool_refcounts_and_lru_eviction():
    pool = BlockPool(3, 4)
    a, b, c = pool.allocate(), pool.allocate(), pool.allocate()
    with pytest.raises(NoFreeBlocks):
        pool.allocate()
    ka, kb = block_hash(None, [1, 2, 3, 4]), block_hash(block_hash(None, [1, 2, 3, 4]), [5, 6, 7, 8])
    assert block_hash(None, [1, 2, 3, 4]) == ka and block_hash(None, [5, 6, 7, 8]) != kb  # the chain matters
    pool.register(a, ka)
    pool.register(b, kb)
    pool.release(a)
    pool.release(b)
    pool.release(c)
    assert pool.num_free() == 3 and pool.lookup(kb) == b and pool.refs[b] == 1  # cached blocks come back
    pool.release(b)
    assert pool.allocate() == c  # a plain free block first
    assert pool.allocate() == a  # then the least recently used cached one, forgetting its key
    assert pool.lookup(ka) is None and pool.lookup(kb) == b
    with pytest.raises(RuntimeError, match="released more often"):
        pool.release(c) or pool.release(c)


class FailsOnLongInputs(torch.nn.Module):
    """The real model, except that a forward of more than `limit` new tokens raises (a stand-in for any failure
    inside the model on one request: an out-of-memory prefill, a kernel error)."""

    def __init__(self, model, limit: int):
        super().__init__()
        self.inner, self.limit, self.config = model, limit, model.config

    def forward(self, ids, **kw):
        if ids.shape[1] > self.limit:
            raise RuntimeError(f"cannot run {ids.shape[1]} tokens at once")
        return self.inner(ids, **kw)


def test_a_failing_request_is_aborted_and_the_loop_keeps_serving():
    model = make_model()
    eng = LLMEngine(FailsOnLongInputs(model, limit=60), block_size=8)
    good = prompts(3, seed=21)
    want = LLMEngine(model, block_size=8).generate(good, GREEDY)
    eng.start()
    try:
        bad = eng.submit([5] * 100, GREEDY)
        events = list(bad)
        assert events[-1].finish_reason == "abort" and "cannot run 100 tokens" in events[-1].error
        assert eng.generate(good, GREEDY) == want  # the loop survived and serves the rest
    finally:
        eng.shutdown()
    assert_pool_whole(eng)


def test_tiny_top_p_keeps_the_most_likely_token():
    from scratchlm.engine.sampling import process_logits, sample

    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9]])
    params = SamplingParams(temperature=1.0, top_p=5e-324)
    assert sample(process_logits(logits, params), params).tolist() == [1]


def test_a_decode_step_traces_as_one_graph():
    # torch.compile (LLMEngine(compile=True)) needs the decode forward without graph breaks: the one-thread
    # context of small attentions stands aside while compiling.
    model = make_model()
    eng = LLMEngine(model, block_size=4, num_blocks=32)
    for tables in ([[0, 1, 2]], [[2, 0, 1], [3, 4, 5]]):
        view = eng.kv.batch(tables, [9] * len(tables), [1] * len(tables))
        with torch.inference_mode():
            explained = torch._dynamo.explain(model)(torch.zeros(len(tables), 1, dtype=torch.long), cache=view)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.slow
@pytest.mark.ci
def test_compiled_engine_equals_eager_without_recompiling_and_refuses_changed_weights():
    from torch._dynamo.utils import counters

    model = make_model()
    eager = LLMEngine(model, block_size=4, num_blocks=64)
    compiled = LLMEngine(model, block_size=4, num_blocks=64, compile=True)
    torch._dynamo.reset()
    compiled.warmup()  # compiles the decode shapes: one row in place, one row gathered, several rows
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 2  # the in-place and the gathered read are different graphs
    seqs = prompts(5, seed=3)
    assert compiled.generate(seqs[:1], GREEDY) == eager.generate(seqs[:1], GREEDY)  # one row, other lengths
    assert compiled.generate(seqs, GREEDY) == eager.generate(seqs, GREEDY)  # five rows of different lengths
    assert counters["stats"]["unique_graphs"] == graphs, "a decode step recompiled after warmup"
    assert_pool_whole(compiled)
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)  # as an optimizer step would
    with pytest.raises(RuntimeError, match="weights"):
        compiled.generate(seqs[:1], GREEDY)
    with pytest.raises(RuntimeError, match="before the first request"):
        compiled.warmup()


# -- the parts: KV manager, scheduler, batched sampling --------------------------------------------------------
def test_kv_manager_prefix_match_takes_cached_blocks_and_fork_shares_them():
    from scratchlm.engine.kv_manager import KVManager
    from scratchlm.engine.request import BlockTable

    kv = KVManager(num_blocks=8, block_size=4)
    toks = list(range(10, 20))  # 10 tokens: 2 full blocks + 2 in a partial one
    first = BlockTable()
    kv.admit(first, toks)
    assert first.blocks == [0, 1, 2] and first.cached == 0
    first.cached = len(toks)
    kv.register_full_blocks(first, toks)
    assert len(first.keys) == 2
    assert [b for b, _ in kv.match_prefix(toks + [99])] == [0, 1] and kv.pool.hits == 0  # peeking takes nothing
    second = BlockTable()
    kv.admit(second, toks + [99])
    assert second.blocks[:2] == [0, 1] and second.cached == 8 and kv.pool.hits == 2
    assert kv.pool.refs[0] == kv.pool.refs[1] == 2
    child = BlockTable()
    copies = []
    kv.fork(first, child, lambda src, dst, n: copies.append((src, dst, n)))
    assert child.blocks[:2] == [0, 1] and kv.pool.refs[0] == 3 and copies == [(2, child.blocks[2], 2)]
    for t in (first, second, child):
        kv.free(t)
    assert not any(kv.pool.refs) and kv.pool.num_free() == 8


def test_kv_manager_admission_is_all_or_nothing():
    from scratchlm.engine.blocks import NoFreeBlocks
    from scratchlm.engine.kv_manager import KVManager
    from scratchlm.engine.request import BlockTable

    kv = KVManager(num_blocks=4, block_size=4)
    held = BlockTable()
    kv.admit(held, list(range(9)))  # 3 blocks
    assert kv.fits(list(range(50, 55))) == (False, False)  # needs 2, one is free
    assert kv.fits(list(range(50, 53)), headroom=1) == (True, False)
    free_before, refs_before = list(kv.pool.free_ids), list(kv.pool.refs)
    with pytest.raises(NoFreeBlocks):
        kv.grow(BlockTable(), 8)
    assert kv.pool.free_ids == free_before and kv.pool.refs == refs_before  # nothing taken
    last = BlockTable()
    kv.grow(last, 4)  # the pool is now full
    refs_full = list(kv.pool.refs)
    child = BlockTable()
    with pytest.raises(NoFreeBlocks):  # the partial block cannot be copied: not even the full ones are shared
        kv.fork(BlockTable([0, 1], [], 6), child, lambda *a: None)
    assert kv.pool.refs == refs_full and child.blocks == []


def test_scheduler_decides_prefill_then_decode_and_preempts_the_latest():
    from scratchlm.engine.kv_manager import KVManager
    from scratchlm.engine.request import Request, RequestHandle, Sample
    from scratchlm.engine.scheduler import Scheduler

    kv = KVManager(num_blocks=4, block_size=4)
    sched = Scheduler(kv, max_num_seqs=4, max_prefill_tokens=100)

    def request(n_tokens):
        h = RequestHandle(None, "r", list(range(n_tokens)), 1)
        return Request(h, [Sample(h, 0, list(range(n_tokens)), GREEDY, n_tokens, None, IncrementalText(None))])

    a, b, c = request(4), request(4), request(8)
    sched.waiting.extend([a, b, c])
    plan = sched.schedule_prefill()
    # a and b take a block each (+1 headroom); c would leave no headroom while others run: it waits
    assert plan.prefill == [a, b] and not plan.decode and not plan.aborted and list(sched.waiting) == [c]
    for r in plan.prefill:
        r.parent.table.cached = 4
        sched.running.append(r.parent)
    plan = sched.schedule_decode()
    # each needs a second block for its 5th token: a gets one, b gets the last
    assert plan.decode == [a.parent, b.parent] and not plan.preempted
    for s in plan.decode:
        s.table.cached, s.tokens = 8, s.tokens + [0] * 4
    plan = sched.schedule_decode()  # both need a third block, none is free: b (the latest) is preempted
    assert plan.preempted == [b.parent] and plan.decode == [a.parent]
    assert sched.waiting[0].samples == [b.parent] and b.parent.table.blocks == [] and sched.preemptions == 1


def test_scheduler_aborts_a_request_too_big_even_alone_without_touching_the_pool():
    from scratchlm.engine.kv_manager import KVManager
    from scratchlm.engine.request import Request, RequestHandle, Sample
    from scratchlm.engine.scheduler import Scheduler

    kv = KVManager(num_blocks=2, block_size=4)
    sched = Scheduler(kv, max_num_seqs=4, max_prefill_tokens=100)
    h = RequestHandle(None, "r", list(range(12)), 1)
    s = Sample(h, 0, list(range(12)), GREEDY, 12, None, IncrementalText(None))
    sched.waiting.append(Request(h, [s]))
    plan = sched.schedule_prefill()
    assert plan.prefill == [] and [x for x, _ in plan.aborted] == [s] and not sched.waiting
    assert kv.pool.num_free() == 2 and not any(kv.pool.refs)


def test_batched_sampling_draws_exactly_what_row_by_row_sampling_draws():
    from scratchlm.engine.sampling import make_generator, process_logits, sample, sample_rows

    torch.manual_seed(0)
    logits = torch.randn(7, 50) * 3
    params = [SamplingParams(temperature=0.8, top_k=10, seed=1), SamplingParams(temperature=0),
              SamplingParams(temperature=0.8, top_k=10, seed=2), SamplingParams(temperature=1.3, top_p=0.7),
              SamplingParams(temperature=0.5, repetition_penalty=1.4, top_p=0.9, seed=4),
              SamplingParams(temperature=0, repetition_penalty=1.4), SamplingParams(temperature=1.0, top_k=3),
              SamplingParams(temperature=0.9, min_p=0.05, frequency_penalty=0.5, presence_penalty=0.3, seed=7),
              SamplingParams(temperature=0.9, min_p=0.05, frequency_penalty=0.5, presence_penalty=0.3, seed=8),
              SamplingParams(temperature=0, frequency_penalty=1.5, presence_penalty=-0.5),
              SamplingParams(temperature=1.1, top_p=0.8, min_p=0.2, repetition_penalty=1.2, presence_penalty=2.0)]
    B = len(params)
    logits = torch.cat([logits, torch.randn(B - 7, 50) * 3])
    seen: list[torch.Tensor | None] = [None] * B
    for i in (4, 5, 10):
        seen[i] = torch.zeros(1, 50, dtype=torch.bool)
        seen[i][0, torch.randint(0, 50, (10,))] = True
    counts: list[torch.Tensor | None] = [None] * B
    for i in (7, 8, 9, 10):
        counts[i] = torch.zeros(1, 50)
        counts[i][0].index_add_(0, torch.randint(0, 50, (12,)), torch.ones(12))

    def gens():
        return [make_generator(p.seed, torch.device("cpu")) for p in params]

    torch.manual_seed(5)
    batched = sample_rows(logits, params, seen, gens(), counts)
    torch.manual_seed(5)
    g = gens()
    alone = [int(sample(process_logits(logits[i:i + 1], p, seen[i], counts[i]), p, g[i])) for i, p in enumerate(params)]
    assert batched == alone
    bad = logits.clone()
    bad[3] = float("nan")
    out = sample_rows(bad, params, seen, gens(), counts)
    assert isinstance(out[3], Exception) and all(isinstance(t, int) for i, t in enumerate(out) if i != 3)
