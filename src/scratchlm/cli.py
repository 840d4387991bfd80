"""`scratchlm <command>`: a thin argparse front. Each command lives in its own module as a plain
function; the module's `add_cli(subparsers)` registers the command and points it at that function."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that contribute commands, in the order `--help` lists them. Every `scratchlm` call imports them all,
# so they import torch, numpy and `tokenizers` inside the functions that run a command, not at the top.
COMMAND_MODULES = [
    "scratchlm.demo.cli",
    "scratchlm.data.cli",
    "scratchlm.tokenizer.cli",
    "scratchlm.shards.cli",
    "scratchlm.model.cli",
    "scratchlm.train.cli",
    "scratchlm.engine.cli",
    "scratchlm.serve.cli",
    "scratchlm.rag.cli",
    "scratchlm.agent.cli",
    "scratchlm.eval.cli",
    "scratchlm.export.cli",
    "scratchlm.quant.cli",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="scratchlm",
        description="Build a language model from scratch: tokenizer → model → pretrain → SFT → chat.",
    )
    from scratchlm import __version__

    parser.add_argument("--version", action="version", version=f"scratchlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except (FileNotFoundError, ValueError) as e:  # ConfigError and data errors are ValueErrors
        if os.environ.get("SCRATCHLM_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        code = getattr(e, "exit_code", 1)  # 2: a bad argument (engine.cli.TextArgumentError), as argparse exits
        if code == 1:
            print("(set SCRATCHLM_DEBUG=1 for the full traceback)", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
