"""`scratchlm quantize RUN --method int8|smoothquant|awq --out RUN_Q` (the work is in quant/quantize.py and model/quant.py)."""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_quantize(args: argparse.Namespace) -> int:
    from scratchlm.quant.quantize import quantize_run, weight_bytes

    out = quantize_run(args.run, args.out, method=args.method, alpha=args.alpha, calib_tokens=args.calib_tokens,
                       group_size=args.group_size)
    before, after = weight_bytes(args.run), weight_bytes(out)
    print(f"wrote {out} ({args.method}): model.safetensors {before / 1e6:.1f} MB → {after / 1e6:.1f} MB "
          f"({after / before:.2f}×); open it like any run (generate, chat, serve, eval)")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register `scratchlm quantize`."""
    import typing

    from scratchlm.config import QuantConfig

    # the methods config.toml's quant.method accepts (no torch import here: every `scratchlm` call registers this)
    methods = [m for m in typing.get_args(typing.get_type_hints(QuantConfig)["method"]) if m != "none"]
    p = subparsers.add_parser("quantize", help="quantize a run's weights (int8 weight-only) into a new run folder")
    p.add_argument("run", help="the float run folder to quantize")
    p.add_argument("--method", choices=methods, default="int8", help="int8: weight-only, one scale per output channel; smoothquant: int8 weights and int8 activations "
                   "(per token) after migrating activation outliers into the weights; awq: int4 weights in groups, "
                   "with activation-aware scales searched on calibration text")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="smoothquant: share of the activations' range moved into the weights (default %(default)s)")
    p.add_argument("--group-size", type=int, default=64,
                   help="awq: weights per int4 scale, 32/64/128/256 (default %(default)s)")
    p.add_argument("--calib-tokens", type=int, default=4096,
                   help="smoothquant, awq: tokens of the corpus' train text to calibrate on (default %(default)s)")
    p.add_argument("--out", required=True, help="the quantized run folder to write")
    p.set_defaults(func=_cmd_quantize)
