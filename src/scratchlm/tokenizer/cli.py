"""`scratchlm tokenizer {train,stats}`: argparse only; the work is in `scratchlm.tokenizer.bpe`."""

from __future__ import annotations

import argparse
import time

from scratchlm.tokenizer.bpe import SPECIAL_TOKENS, Tokenizer, default_records, iter_records, tokenizer_stats, train_tokenizer


def _print_stats(tok: Tokenizer, stats: dict[str, dict[str, float]], title: str) -> None:
    """A rich table of `tokenizer_stats` output."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("lang", "docs", "chars", "tokens", "chars/token", "bytes/token"):
        table.add_column(col, justify="left" if col == "lang" else "right")
    for lang, r in stats.items():
        table.add_row(
            lang, f"{r['docs']:,}", f"{r['chars']:,}", f"{r['tokens']:,}",
            f"{r['chars_per_token']:.3f}", f"{r['bytes_per_token']:.3f}",
        )
    console = Console()
    console.print(table)
    console.print(f"vocab size {tok.vocab_size:,} ({len(SPECIAL_TOKENS)} special/tag tokens at ids 0..{len(SPECIAL_TOKENS) - 1})")


def cmd_train(args: argparse.Namespace) -> int:
    """`scratchlm tokenizer train`."""
    src = ", ".join(args.input) if args.input else "the built-in corpus (train split)"
    print(f"training byte-level BPE, vocab {args.vocab_size:,}, on {src}", flush=True)
    t0 = time.perf_counter()
    out = train_tokenizer(args.out, vocab_size=args.vocab_size, inputs=args.input, normalize=args.normalize)
    tok = Tokenizer.load(out)
    print(f"trained vocab of {tok.vocab_size:,} (asked {args.vocab_size:,}) in {time.perf_counter() - t0:.1f}s → {out}")
    if tok.vocab_size < args.vocab_size:
        print("note: the training text ran out of pairs to merge before reaching the requested size")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """`scratchlm tokenizer stats`."""
    tok = Tokenizer.load(args.dir)
    if args.input:
        records, title = list(iter_records(args.input)), "tokenizer on " + ", ".join(args.input)
    else:
        records, title = default_records("validation"), "tokenizer on the corpus validation split"
    stats = tokenizer_stats(tok, records)
    _print_stats(tok, stats, title)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `scratchlm tokenizer {train,stats}`."""
    p = subparsers.add_parser("tokenizer", help="train a byte-level BPE tokenizer; report its compression")
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")

    t = sub.add_parser("train", help="train byte-level BPE (default: on the built-in corpus)")
    t.add_argument("--out", required=True, help="output folder (tokenizer.json + tokenizer_config.json)")
    t.add_argument("--vocab-size", type=int, default=6400, help="total ids incl. special tokens (default 6400)")
    t.add_argument("--input", nargs="+", metavar="FILE", help=".txt or .jsonl ('text' field) files, .gz ok")
    t.add_argument(
        "--normalize", choices=("NFKC", "NFC", "none"), default="NFKC",
        help="clean training text like `prepare --normalize` (default NFKC, prepare's default)",
    )
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("stats", help="characters per token on the validation split, zh and en apart")
    s.add_argument("dir", help="tokenizer folder")
    s.add_argument("--input", nargs="+", metavar="FILE", help="measure on these files instead of the corpus")
    s.set_defaults(func=cmd_stats)
