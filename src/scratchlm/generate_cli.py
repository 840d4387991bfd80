"""`scratchlm generate RUN_OR_DIR --prompt "..."`: the command's front, apart from generate.py so that
registering it (every `scratchlm` call, `--help` included) does not import torch."""

from __future__ import annotations

import argparse
import sys


def _cmd_generate(args: argparse.Namespace) -> int:
    from scratchlm.generate import Engine, SamplingParams, load_for_generate

    model, tokenizer = load_for_generate(args.run, args.device)
    if tokenizer is None:
        raise ValueError(f"{args.run}: no tokenizer.json in the run folder; generate needs one to encode --prompt")
    engine = Engine(model, tokenizer)
    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    ids = engine.encode_prompt(args.prompt, chat=args.chat)
    if args.stream:
        # decode the growing sequence and print the new suffix: a multi-byte character may span tokens
        out: list[int] = []
        shown = ""
        for tok in engine.stream(ids, params):
            out.append(tok)
            text = tokenizer.decode(out, skip_special_tokens=True)
            if not text.endswith("\ufffd"):
                sys.stdout.write(text[len(shown):])
                sys.stdout.flush()
                shown = text
        print(tokenizer.decode(out, skip_special_tokens=True)[len(shown):])
    else:
        out = engine.generate([ids], params)[0]
        print(tokenizer.decode(out, skip_special_tokens=True))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `scratchlm generate`."""
    p = subparsers.add_parser("generate", help="generate text from a trained run folder")
    p.add_argument("run", metavar="RUN_OR_DIR", help="run folder (config.toml, model.safetensors, tokenizer.json)")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a ChatML user turn and open the assistant turn")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=0.9, help="1 = off")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.set_defaults(func=_cmd_generate)
