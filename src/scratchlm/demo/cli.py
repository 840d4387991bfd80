"""`scratchlm demo`: the arguments only; `scratchlm.demo.pipeline.run_demo` does the work."""

from __future__ import annotations

import argparse
from typing import Any

from scratchlm.demo.settings import DEMO_STEPS, DemoSettings, override_settings, parse_stages, quick_settings


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """The DemoSettings that `scratchlm demo`'s flags ask for (--quick, --seed, --pretrain-steps, --sft-steps)."""
    s = quick_settings() if args.quick else DemoSettings()
    s.seed = args.seed
    s.eval_split = args.eval_split
    s.stages = parse_stages(args.stages)
    if args.one_lane:
        s.lanes = 1
    for name in ("pretrain_steps", "sft_steps"):
        steps = getattr(args, name)
        if steps is not None:
            if steps < 1:
                raise SystemExit(f"scratchlm demo: --{name.replace('_', '-')} must be at least 1, got {steps}")
            setattr(s, name, steps)
    return override_settings(s, args.setting)


def _cmd_demo(args: argparse.Namespace) -> int:
    from scratchlm.demo.pipeline import run_demo

    s = settings_from_args(args)
    summary = run_demo(args.out, settings=s, progress=not args.no_progress)
    if args.results:
        from scratchlm.results import write_results

        path = write_results(args.results, "demo", summary, seed=s.seed, split=s.eval_split)
        print(f"[demo] results file: {path}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register `scratchlm demo`."""
    p = subparsers.add_parser("demo", help="end to end on the built-in corpus: tokenizer → pretrain → SFT → eval")
    p.add_argument("--out", default="runs/demo", help="folder for every stage (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a ~1-minute version (tiny model, few steps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--stages", default="pretrain,sft", metavar="LIST",
                   help=f"stages to run, in order (default pretrain,sft; 'all' = {','.join(DEMO_STEPS)}): lora teaches "
                        "the SFT model a new name with LoRA adapters; tools fine-tunes it to answer 4-5 digit arithmetic "
                        "by calling a calculator (scratchlm agent RUN/tools ...)")
    p.add_argument("--one-lane", action="store_true",
                   help="run the stages after SFT one after another (default on a CPU: the setting second_lane's, "
                        "reward, dpo, ppo and distill, in a second process beside the others, each process on half "
                        "the threads)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic data, the tokenizer's text, initialisation and data order (default 0)")
    p.add_argument("--eval-split", choices=("test", "val"), default="test",
                   help="the split the accuracies come from: test (default; report it, never choose settings on it) "
                        "or val, the dev split to compare settings on")
    p.add_argument("--results", default=None, metavar="FILE",
                   help="also write the summary with its provenance (command, seed, split, commit, machine, date) to "
                        "FILE, e.g. docs/results/demo_seed0.json: the README's reference tables are rendered from these")
    p.add_argument("--pretrain-steps", type=int, default=None, metavar="N",
                   help=f"pretraining steps (default {DemoSettings.pretrain_steps}; fewer weaken val perplexity)")
    p.add_argument("--sft-steps", type=int, default=None, metavar="N",
                   help=f"SFT steps (default {DemoSettings.sft_steps}, ~1 s each on 2 cores; more steps raise "
                        "held-out add2 accuracy, see README)")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="override one of configs/demo/settings.toml's [demo] values, VALUE in TOML syntax (repeat "
                        "the flag), e.g. --setting sft_mixed_turns=0.3 --setting preset='\"tiny\"'; choose settings "
                        "with --eval-split val")
    p.set_defaults(func=_cmd_demo)
