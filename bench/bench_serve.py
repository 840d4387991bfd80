"""The OpenAI-compatible server under load, measured from the client side over HTTP (bench_engine.py measures the
engine in-process; this adds the HTTP layer, SSE and the event loop).

    python bench/bench_serve.py [--run RUN | --preset minimind-26m] [--new 64] [--rounds 2]
    python bench/bench_serve.py --url http://127.0.0.1:8000   # a server you started (only [1])

Without --url it starts `scratchlm serve` itself on free loopback ports: the run given by --run, or a random model
of --preset with a small tokenizer (weights do not matter for speed).
1. aggregate generated tokens/s and p50 / p99 time to first token for 1, 4 and 16 concurrent streams, each a
   distinct --prompt-token prompt asking for --new tokens (greedy), over --rounds rounds. Goal: 16 streams ≥ 4× the
   aggregate throughput of 1 stream (on 2 CPU cores).
2. time to first token of a second chat turn (the first turn of ~--first-turn tokens already answered) on a server
   with prefix caching and one with --no-prefix-caching; median of --repeats conversations.

Both servers run in their own processes while the client's threads only wait on sockets, so the numbers include
what a real client sees. Ratios are the point; absolute numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx


def make_random_run(preset: str, out: Path) -> Path:
    """A run folder with a random `preset` model and a 1024-token tokenizer trained on a few corpus lines."""
    import torch

    from scratchlm.config import load_config
    from scratchlm.model.transformer import Transformer
    from scratchlm.runs import save_run
    from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer

    text = out / "text.txt"
    words = "the cat sat on the mat while a quick brown fox jumped over lazy dogs 床前明月光 疑是地上霜".split()
    rng = random.Random(0)
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(2000)), encoding="utf-8")
    tok_dir = train_tokenizer(out / "tok", vocab_size=1024, inputs=[text], show_progress=False)
    cfg = load_config(preset, [f"model.vocab_size={Tokenizer.load(tok_dir).vocab_size}", "train.objective=sft"])
    torch.manual_seed(0)
    return save_run(out / "run", Transformer(cfg.model), cfg, tok_dir)


def server(run: Path, *extra: str):
    """`scratchlm serve run` in a subprocess on a free port → its base URL (a context manager)."""
    from scratchlm.serve.launch import serve_process

    return serve_process(run, "--model-name", "bench", "--log-level", "warning", *extra)


def stream_once(client: httpx.Client, url: str, body: dict) -> tuple[float, int, float]:
    """(time to first token, generated tokens, total seconds) of one streamed request."""
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    with client.stream("POST", url, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.read().decode()}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or []
            delta = (choices[0].get("delta") or {}) if choices else {}
            if ttft is None and choices and (choices[0].get("text") or choices[0].get("logprobs")
                                             or delta.get("content") or delta.get("reasoning_content")):
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total), tokens, total


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def concurrency(url: str, vocab: int, n_new: int, prompt_tokens: int, rounds: int, counts=(1, 4, 16)) -> dict:
    """{streams: (aggregate tokens/s, p50 TTFT, p99 TTFT)} for each concurrency level."""
    rng = random.Random(0)
    out = {}
    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        stream_once(client, url + "/v1/completions", {"prompt": [20] * 8, "max_tokens": 4, "temperature": 0})  # warm up
        for c in counts:
            ttfts, tokens, wall = [], 0, 0.0
            for _ in range(rounds):
                # logprobs: every token comes as its own event, also one whose bytes do not end a character yet
                # (a random model makes many; their text is held back until the character is whole).
                bodies = [{"prompt": [rng.randrange(16, vocab) for _ in range(prompt_tokens)], "max_tokens": n_new,
                           "temperature": 0, "logprobs": 0} for _ in range(c)]
                results: list = [None] * c

                def run(i: int) -> None:
                    results[i] = stream_once(client, url + "/v1/completions", bodies[i])

                threads = [threading.Thread(target=run, args=(i,)) for i in range(c)]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall += time.perf_counter() - t0
                for i, res in enumerate(results):
                    if res is None:
                        raise RuntimeError(f"stream {i} of {c} failed (see the traceback above)")
                    ttfts.append(res[0])
                    tokens += res[1]
            out[c] = (tokens / wall, _percentile(ttfts, 0.5), _percentile(ttfts, 0.99))
    return out


def second_turn_ttft(url: str, first_turn_words: int, repeats: int) -> float:
    """Median time to first token of a second chat turn, its first turn answered just before."""
    rng = random.Random(1)
    words = "the cat sat on the mat while a quick brown fox jumped over lazy dogs".split()
    ttfts = []
    with httpx.Client(timeout=600) as client:
        for k in range(repeats):
            system = f"conversation {k}: " + " ".join(rng.choice(words) for _ in range(first_turn_words))
            history = [{"role": "system", "content": system}, {"role": "user", "content": "tell me about the cat"}]
            first = client.post(url + "/v1/chat/completions",
                                json={"messages": history, "max_tokens": 16, "temperature": 0}).json()
            history.append({"role": "assistant", "content": first["choices"][0]["message"]["content"] or ""})
            history.append({"role": "user", "content": "and the fox?"})
            ttft, _, _ = stream_once(client, url + "/v1/chat/completions",
                                     {"messages": history, "max_tokens": 1, "temperature": 0})
            ttfts.append(ttft)
    return statistics.median(ttfts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=None, help="a running server (else one is started)")
    ap.add_argument("--run", default=None, help="run folder to serve (default: a random --preset model)")
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--new", type=int, default=64, help="tokens per stream")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--first-turn", type=int, default=300, help="words of the first turn's system prompt")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    run = Path(args.run) if args.run else None
    if args.url is None and run is None:
        print(f"building a random {args.preset} run ...", flush=True)
        run = make_random_run(args.preset, Path(tmp.name))

    def level_report(url: str) -> None:
        vocab = httpx.get(url + "/openapi.json").json()["components"]["schemas"]["CompletionRequest"][
            "properties"]["prompt"]["anyOf"][2]["items"]["maximum"] + 1
        res = concurrency(url, vocab, args.new, args.prompt_tokens, args.rounds)
        for c, (tps, p50, p99) in res.items():
            print(f"[1] {c:2d} stream{'s' if c > 1 else ' '}: {tps:8.1f} tok/s aggregate | TTFT p50 {p50 * 1e3:7.1f} ms "
                  f"p99 {p99 * 1e3:7.1f} ms | {tps / res[1][0]:4.2f}x the 1-stream aggregate", flush=True)
        print(f"    goal: 16 streams >= 4x one stream -> {res[16][0] / res[1][0]:.2f}x", flush=True)

    if args.url:
        level_report(args.url)
        return
    with server(run) as url:
        level_report(url)
        on = second_turn_ttft(url, args.first_turn, args.repeats)
    with server(run, "--no-prefix-caching") as url:
        off = second_turn_ttft(url, args.first_turn, args.repeats)
    print(f"[2] second chat turn after a ~{args.first_turn}-word first turn, TTFT: prefix caching {on * 1e3:.1f} ms | "
          f"off {off * 1e3:.1f} ms | {off / on:.2f}x faster with it")
    tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
