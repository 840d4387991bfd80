"""`scratchlm generate RUN_OR_DIR --prompt "..."`, and `add_sampling_args`: the one set of sampling options every
command that samples shares. Apart from the library so that registering commands (every `scratchlm` call,
`--help` included) does not import torch."""

from __future__ import annotations

import argparse
import sys
from typing import Any



def add_sampling_args(parser: argparse.ArgumentParser, default_temperature: float = 0.7,
                      default_max_new_tokens: int = 128, default_top_p: float = 0.9,
                      default_seed: int | None = None, default_min_p: float = 0.0,
                      default_frequency_penalty: float = 0.0, default_presence_penalty: float = 0.0,
                      default_repetition_penalty: float = 1.0) -> None:
    """Add --max-new-tokens, --temperature, --top-k, --top-p, --min-p, --repetition-penalty, --frequency-penalty,
    --presence-penalty and --seed to `parser`, each --help line showing its default."""
    parser.add_argument("--max-new-tokens", type=int, default=default_max_new_tokens, help="(default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=default_temperature,
                        help="0 = greedy (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=default_top_p, help="1 = off (default: %(default)s)")
    parser.add_argument("--min-p", type=float, default=default_min_p,
                        help="keep tokens with probability >= MIN_P x the top token's; 0 = off (default: %(default)s)")
    parser.add_argument("--repetition-penalty", type=float, default=default_repetition_penalty,
                        help="divides the logits of tokens in the prompt or reply; 1 = off (default: %(default)s)")
    parser.add_argument("--frequency-penalty", type=float, default=default_frequency_penalty,
                        help="OpenAI's: minus this x each token's count in the reply, in [-2, 2]; 0 = off "
                             "(default: %(default)s)")
    parser.add_argument("--presence-penalty", type=float, default=default_presence_penalty,
                        help="OpenAI's: minus this for each token already in the reply, in [-2, 2]; 0 = off "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=default_seed, help="(default: %(default)s)")


KV_CACHE_DTYPES = ("auto", "int8")  # engine/paged_cache.KV_DTYPES, repeated so that --help imports no torch


def add_kv_cache_arg(parser: argparse.ArgumentParser) -> None:
    """Add --kv-cache-dtype (auto | int8) to a command that builds an LLMEngine; its value goes to the engine's
    `kv_cache_dtype`."""
    parser.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                        help="storage of the KV cache's block pool: auto = the model's dtype; int8 = one byte a "
                             "value plus 4 bytes per token and KV head (about 0.28x an fp32 pool's bytes: about "
                             "3.5x the sequences fit in the same memory), for a small quality cost (greedy replies "
                             "identical to fp32's on 97.8%% of the demo's held-out test prompts) and somewhat slower "
                             "steps at short contexts; see docs/quantization.md (default: %(default)s)")


class TextArgumentError(ValueError):
    """A command-line text that no tokenizer or embedder can encode: a usage error, so `scratchlm` prints it on one
    line and exits with 2, as argparse does for a bad argument."""

    exit_code = 2


def check_text_arg(text: str | None, name: str) -> None:
    """TextArgumentError naming the argument `name` when `text` holds a lone surrogate. Python turns argv bytes
    that are not UTF-8 into U+DC80..U+DCFF (surrogateescape), which the tokenizer would refuse only after the model
    loaded, with a message that names no argument."""
    from scratchlm.tokenizer.bpe import lone_surrogate

    bad = lone_surrogate(text or "")
    if bad is None:
        return
    at, ch = bad
    cp = ord(ch)
    what = (f"byte 0x{cp - 0xDC00:02X} at character {at} is not UTF-8" if 0xDC80 <= cp <= 0xDCFF
            else f"a lone surrogate U+{cp:04X} at character {at}")
    raise TextArgumentError(f"argument {name}: not valid Unicode text ({what}); pass UTF-8 text")


def sampling_params(args: argparse.Namespace) -> Any:
    """The SamplingParams of the options `add_sampling_args` added."""
    from scratchlm.engine.sampling import SamplingParams

    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty,
                          presence_penalty=args.presence_penalty, max_new_tokens=args.max_new_tokens,
                          seed=args.seed)


def _cmd_generate(args: argparse.Namespace) -> int:
    from scratchlm.engine.offline import LLM

    check_text_arg(args.prompt, "--prompt")  # before the weights load
    llm = LLM.from_run(args.run, args.device, kv_cache_dtype=args.kv_cache_dtype)
    tokenizer = llm.tokenizer
    if tokenizer is None:
        raise ValueError(f"{args.run}: no tokenizer.json in the run folder; generate needs one to encode --prompt")
    params = sampling_params(args)
    ids = llm.encode_prompt(args.prompt, chat=args.chat)
    if args.stream:
        # decode the growing sequence and print the new suffix: a multi-byte character may span tokens
        out: list[int] = []
        shown = ""
        for tok in llm.stream(ids, params):
            out.append(tok)
            text = tokenizer.decode(out, skip_special_tokens=True)
            if not text.endswith("\ufffd"):
                sys.stdout.write(text[len(shown):])
                sys.stdout.flush()
                shown = text
        print(tokenizer.decode(out, skip_special_tokens=True)[len(shown):])
    else:
        out = llm.generate([ids], params)[0]
        print(tokenizer.decode(out, skip_special_tokens=True))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `scratchlm generate`."""
    p = subparsers.add_parser("generate", help="generate text from a trained run folder")
    p.add_argument("run", metavar="RUN_OR_DIR", help="run folder (config.toml, model.safetensors, tokenizer.json)")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a ChatML user turn and open the assistant turn")
    add_sampling_args(p, default_temperature=0.7, default_max_new_tokens=128)
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    add_kv_cache_arg(p)
    p.set_defaults(func=_cmd_generate)
