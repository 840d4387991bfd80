"""`scratchlm serve RUN` (the OpenAI-compatible server) and `scratchlm chat RUN` (terminal chat). Registering
them imports no torch or FastAPI: the commands load those when they run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scratchlm.engine.cli import add_kv_cache_arg, add_sampling_args
from scratchlm.engine.chat_defaults import CHAT_SAMPLING_DEFAULTS


def open_engine(run: str, device: str = "auto", block_size: int = 16, num_blocks: int | None = None,
                max_num_seqs: int = 16, max_waiting: int = 64, prefix_caching: bool = True,
                compile: bool = False, kv_cache_dtype: str = "auto") -> tuple[Any, Any, Any]:
    """(started LLMEngine, tokenizer, config) of a run folder; refuses runs that cannot generate text. With
    `compile`, the decode step is compiled (weights frozen) before it returns."""
    import time

    from scratchlm.device import pick_device
    from scratchlm.engine import LLMEngine
    from scratchlm.runs import load_run

    model, tokenizer, cfg = load_run(run, device=pick_device(device))
    if tokenizer is None:
        raise ValueError(f"{run}: no tokenizer.json in the run folder; serving needs one to encode prompts")
    if cfg.train.objective == "reward":
        raise ValueError(f"{run} is a reward model (train.objective='reward'): it scores text and cannot generate")
    engine = LLMEngine(model, tokenizer, block_size=block_size, num_blocks=num_blocks, max_num_seqs=max_num_seqs,
                       max_waiting=max_waiting, prefix_caching=prefix_caching, compile=compile,
                       kv_cache_dtype=kv_cache_dtype)
    if compile:
        print("compiling the decode step (torch.compile, weights frozen; about a minute on 2 CPU cores) ...", flush=True)
        t = time.perf_counter()
        engine.warmup()
        print(f"compiled in {time.perf_counter() - t:.0f} s", flush=True)
    engine.start()
    return engine, tokenizer, cfg


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block")
    p.add_argument("--num-blocks", type=int, default=None,
                   help="KV cache blocks in the pool (default: max-num-seqs sequences at half the context)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="sequences decoded together at most")
    p.add_argument("--no-prefix-caching", dest="prefix_caching", action="store_false",
                   help="prefill every prompt in full, even a prefix another request already computed")
    p.add_argument("--compile", action="store_true",
                   help="compile the decode step with torch.compile, weights frozen into it (needs a C++ compiler "
                        "on a CPU; about a minute at start): batch-1 decode ~1.2x faster on 2 cores, see docs/engine.md")
    add_kv_cache_arg(p)


def _engine_kwargs(args: argparse.Namespace) -> dict:
    return {"device": args.device, "block_size": args.block_size, "num_blocks": args.num_blocks,
            "max_num_seqs": args.max_num_seqs, "prefix_caching": args.prefix_caching, "compile": args.compile,
            "kv_cache_dtype": args.kv_cache_dtype}


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from scratchlm.serve.app import create_app
    from scratchlm.serve.prompt import chat_run_problem

    reward = None
    if args.reward_run:  # checked and loaded before the engine starts: a wrong path costs nothing
        from scratchlm.device import pick_device
        from scratchlm.engine.scaling import load_reward_run, reward_scorer

        reward = reward_scorer(*load_reward_run(args.reward_run, device=pick_device(args.device)))
        print(f"best-of-N replies (the `scaling` extension) are scored by the reward model {args.reward_run}")
    engine, tokenizer, cfg = open_engine(args.run, max_waiting=args.max_waiting, **_engine_kwargs(args))
    name = args.model_name or Path(args.run).resolve().name
    problem = chat_run_problem(args.run, cfg, tokenizer)
    if problem:  # /v1/completions still makes sense for a base model
        print(f"warning: {problem}; /v1/chat/completions will apply the template anyway")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach it can use it")
    rag = None
    if args.rag_db:
        from scratchlm.serve.rag import RagContext

        try:
            rag = RagContext(args.rag_db, k=args.rag_k)
        except BaseException:
            engine.shutdown()
            raise
        print(f"answering chat requests from {args.rag_db} ({rag.chunks} chunks, {rag.embedder.name} + BM25, "
              f"top {args.rag_k})")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allowed_host:
        print(f"note: only requests naming a localhost host are answered; add --allowed-host NAME for each name "
              f"clients use to reach {args.host} (or --allowed-host '*')")
    bound = [] if args.host in ("0.0.0.0", "::") else [args.host]  # the address it listens on is a name clients use
    app = create_app(engine, tokenizer, name, api_key=args.api_key, rag=rag, allowed_hosts=[*bound, *args.allowed_host],
                     docs=args.docs, reward=reward)
    print(f"serving {name} (context {engine.max_seq_len} tokens; KV cache {args.kv_cache_dtype}, "
          f"{engine.kv.nbytes() / 2**20:.1f} MiB) at http://{args.host}:{args.port}/  "
          f"(OpenAI API under /v1, chat page at /, metrics at /metrics)")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.shutdown()
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from scratchlm.engine.cli import check_text_arg, sampling_params
    from scratchlm.runs import load_run_config
    from scratchlm.serve.chat import chat_loop
    from scratchlm.serve.prompt import chat_run_problem
    from scratchlm.tokenizer.bpe import Tokenizer

    # Checked before the weights load: a base model or a --system that is not text gets its message at once.
    check_text_arg(args.system, "--system")
    tok = Tokenizer.load(args.run) if (Path(args.run) / "tokenizer.json").is_file() else None
    problem = chat_run_problem(args.run, load_run_config(args.run), tok)
    if problem:
        raise ValueError(problem)
    engine, tokenizer, _ = open_engine(args.run, **_engine_kwargs(args))
    params = sampling_params(args)
    try:
        chat_loop(engine, tokenizer, params, system=args.system, think=not args.no_think)
    finally:
        engine.shutdown()
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `scratchlm serve` and `scratchlm chat`."""
    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server (+ web chat page) for a run",
                              description="Serve a run over HTTP: /v1/chat/completions, /v1/completions, "
                              "/v1/models, /health, /metrics and a chat page at /. Needs the [serve] extra.")
    p.add_argument("run", metavar="RUN", help="run folder (config.toml, model.safetensors, tokenizer.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 routes, /metrics and /openapi.json")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable; '*' for any). By default only "
                        "localhost names are answered, which stops DNS-rebinding pages from reaching the server")
    p.add_argument("--docs", action="store_true",
                   help="serve the interactive API docs at /docs and /redoc (their scripts load from a CDN)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the run folder's name)")
    p.add_argument("--max-waiting", type=int, default=64, help="queued requests before new ones get 429")
    p.add_argument("--log-level", default="info", help="uvicorn's log level")
    p.add_argument("--rag-db", default=None, metavar="FILE",
                   help="answer chat requests from this `scratchlm rag index` database: the top chunks go into the "
                        "last user turn, the response lists them in 'sources' (needs the [rag] extra)")
    p.add_argument("--rag-k", type=int, default=3, help="chunks retrieved per question with --rag-db (default 3)")
    p.add_argument("--reward-run", default=None, metavar="RUN",
                   help="reward-model run that picks best-of-N replies: a chat request with "
                        "scaling={method: best_of, samples: N} (docs/serving.md)")
    _engine_args(p)
    p.set_defaults(func=_cmd_serve)

    c = subparsers.add_parser("chat", help="chat with a run in the terminal (streaming, multi-turn)",
                              description="Chat with an SFT (or later) run. Commands: /reset, /system TEXT, "
                              "/think on|off, /exit.")
    c.add_argument("run", metavar="RUN", help="run folder of a chat model (SFT or later stage)")
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--no-think", action="store_true", help="start with thinking off (/think on turns it back)")
    d = CHAT_SAMPLING_DEFAULTS
    add_sampling_args(c, default_temperature=d["temperature"], default_max_new_tokens=256, default_top_p=d["top_p"],
                      default_min_p=d["min_p"], default_frequency_penalty=d["frequency_penalty"],
                      default_presence_penalty=d["presence_penalty"],
                      default_repetition_penalty=d["repetition_penalty"])
    _engine_args(c)
    c.set_defaults(func=_cmd_chat)
