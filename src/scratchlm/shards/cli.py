"""`scratchlm prepare`: argparse and the report table; the work is in `scratchlm.shards.prepare`."""

from __future__ import annotations

import argparse
from pathlib import Path

from scratchlm.data.clean import NORMALIZE_FORMS
from scratchlm.shards.prepare import (
    CONTROL_COUNT_KEYS, COUNT_KEYS, DEFAULT_NEAR_DUP, DEFAULT_SHARD_TOKENS, SPECIAL_TOKENS_OPTION, parse_mix, prepare,
)
from scratchlm.shards.sources import KINDS


def print_report(meta: dict) -> None:
    """A rich table of the counts per input and in total."""
    from rich.console import Console
    from rich.table import Table

    counts = meta["counts"]
    table = Table(title=f"prepare {meta['kind']}: {meta['n_docs']:,} docs, {meta['n_tokens']:,} tokens "
                        f"({meta['dtype']}) in {meta['seconds']:.1f}s")
    # One row per count, one column per input: stays readable in a narrow terminal.
    cols = list(counts["per_input"].items())
    if len(cols) > 1:
        cols.append(("total", counts))
    table.add_column("count")
    for name, _c in cols:
        table.add_column(Path(name).name, justify="right")
    for k in COUNT_KEYS:
        if k in CONTROL_COUNT_KEYS and meta["kind"] != "pretrain":
            continue
        table.add_row(k, *(f"{c[k]:,}" for _name, c in cols))
    console = Console()
    console.print(table)
    if "mix" in meta:
        mt = Table(title="mix (shares of tokens)")
        for col in ("input", "weight", "items in", "items out", "tokens out", "share"):
            mt.add_column(col, justify="left" if col == "input" else "right")
        for name, m in meta["mix"].items():
            mt.add_row(name, f"{m['weight']:g}", f"{m['items_in']:,}", f"{m['items_out']:,}", f"{m['tokens_out']:,}",
                       f"{m['tokens_out'] / max(meta['n_tokens'], 1):.3f}")
        console.print(mt)


def throughput_line(meta: dict) -> str:
    """How fast the run read its inputs: MB/s (input bytes as read) and documents per second."""
    secs = max(meta["seconds"], 1e-9)
    return (f"read {meta['input_bytes'] / 1e6:,.1f} MB / {meta['counts']['read']:,} docs in {meta['seconds']:.1f}s: "
            f"{meta['input_bytes'] / 1e6 / secs:,.2f} MB/s, {meta['counts']['read'] / secs:,.0f} docs/s")


def cmd_prepare(args: argparse.Namespace) -> int:
    """`scratchlm prepare`."""
    meta = prepare(
        args.kind, args.tokenizer, args.input, args.out,
        mix=parse_mix(args.mix) if args.mix else None,
        skip_bad=args.skip_bad, min_chars=args.min_chars, max_chars=args.max_chars,
        dedup=not args.no_dedup, near_dup_threshold=args.near_dup_threshold, normalize=args.normalize,
        shard_tokens=args.shard_tokens, val_frac=args.val_frac, seed=args.seed, progress=not args.quiet,
        special_tokens_in_text=args.special_tokens_in_text,
    )
    if not args.quiet:
        print_report(meta)
    print(f"wrote {meta['n_docs']:,} docs / {meta['n_tokens']:,} tokens in {len(meta['shards'])} shard(s) → {args.out}")
    print(throughput_line(meta))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `scratchlm prepare`."""
    p = subparsers.add_parser("prepare", help="clean, dedup, mix and tokenise data into token shards")
    p.add_argument("--kind", required=True, choices=KINDS, help="pretrain text, sft chats, preference pairs, prompts")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (tokenizer.json)")
    p.add_argument("--input", nargs="+", metavar="FILE",
                   help=".jsonl(.gz) for every kind; .txt(.gz) (a document per blank-line-separated paragraph) and "
                        ".parquet ('text' column) for pretrain; 'builtin' = the built-in corpus (pretrain default)")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder (replaced cleanly on rerun)")
    p.add_argument("--mix", nargs="+", metavar="FILE:WEIGHT",
                   help="inputs with weights = shares of output tokens (instead of --input)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed lines instead of stopping")
    p.add_argument("--min-chars", type=int, default=0, help="drop items shorter than this (default 0)")
    p.add_argument("--max-chars", type=int, default=0, help="drop items longer than this (default 0 = no limit)")
    p.add_argument("--no-dedup", action="store_true", help="keep exact and near duplicates")
    p.add_argument("--near-dup-threshold", type=float, default=None,
                   help=f"MinHash Jaccard threshold (default {DEFAULT_NEAR_DUP} for pretrain, off for chat kinds; 0 = off)")
    p.add_argument("--normalize", choices=NORMALIZE_FORMS, default="NFKC", help="Unicode normalisation (default NFKC)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    p.add_argument("--val-frac", type=float, default=0.0, help="fraction of items for the val/ split (by hash)")
    p.add_argument("--seed", type=int, default=0, help="seed of mixing and MinHash")
    p.add_argument(SPECIAL_TOKENS_OPTION, action="store_true",
                   help="pretrain only: control-token strings in the text (<|im_start|>, <|im_end|>, <|endoftext|>) "
                        "become those tokens, as MiniMind trains on its pretrain_hq.jsonl (default: plain text)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or report table")
    p.set_defaults(func=cmd_prepare)
