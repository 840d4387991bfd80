"""`scratchlm model info`: argparse only; the table comes from `scratchlm.model.info`."""

from __future__ import annotations

import argparse

from scratchlm.model.info import print_info


def _cmd_info(args: argparse.Namespace) -> int:
    print_info(args.preset, args.set, args.ctx)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `scratchlm model info`."""
    model = subparsers.add_parser("model", help="inspect model configs")
    sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("info", help="parameters, KV-cache bytes and FLOPs per token of a preset")
    p.add_argument("preset", help="preset name (debug, tiny, minimind-26m, ...) or a TOML file")
    p.add_argument("--set", action="append", default=[], metavar="model.FIELD=VALUE", help="override a config field")
    p.add_argument("--ctx", type=int, default=None, help="context length for the attention FLOPs (default: max_seq_len)")
    p.set_defaults(func=_cmd_info)
