"""`scratchlm train STAGE|teacher-data|plot` (the stages of scratchlm/stages.py) and `scratchlm lora merge`: thin
wrappers around plain functions."""

from __future__ import annotations

import argparse
import os
from typing import Any

from scratchlm.engine.cli import add_sampling_args, sampling_params
from scratchlm.train.stage import train_stage


def _cmd_train(args: argparse.Namespace) -> int:
    if getattr(args, "teacher", None):
        args.set = [*args.set, f"distill.teacher={args.teacher}"]
    result = train_stage(args.stage, args.out, args.config, args.set, args.data, args.init_from, args.resume,
                       args.tokenizer, args.stop_at_step, not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
        val = f", val loss {result.val[-1][1]:.4f}" if result.val else ""
        print(f"{result.status}: step {result.step}, loss {last}{val}, {result.tokens} tokens "
              f"in {result.seconds:.1f}s → {result.out_dir}")
    return 0 if result.status in ("done", "stopped") else 130


def _cmd_teacher_data(args: argparse.Namespace) -> int:
    from scratchlm.train.distill import teacher_answers

    if args.samples < 1:
        raise ValueError("--samples must be at least 1")
    c = teacher_answers(args.teacher, args.prompts, args.out, args.samples, sampling_params(args), args.check)
    print(f"{args.out}: {c['kept']} conversations from {c['answers']} teacher answers to {c['prompts']} prompts"
          + (f" ({c['too_long']} prompts too long for the teacher's context skipped)" if c["too_long"] else "")
          + (" (only answers that check_answer accepts)" if args.check else ""))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from scratchlm.train.metrics_log import plot_metrics

    print(plot_metrics(args.run))
    return 0


def _cmd_lora_merge(args: argparse.Namespace) -> int:
    from scratchlm.train.lora_merge import merge_run

    out = merge_run(args.run, args.out)
    print(f"merged {args.run} into {out}/model.safetensors")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register `scratchlm train ...` and `scratchlm lora merge`."""
    from scratchlm.stages import STAGES

    p = subparsers.add_parser("train", help=f"train a model ({', '.join(STAGES)}); plot a run's loss")
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, spec in STAGES.items():
        s = sub.add_parser(stage, help=spec.help)
        s.add_argument("--config", default=None, help="preset name or TOML path (default: tiny; "
                       "on --resume: the run's own config.toml)")
        s.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override a config field (repeatable)")
        s.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
        s.add_argument("--data", default=None, help="prepared shard folder (shortcut for --set train.data=DIR)")
        s.add_argument("--init-from", default=None, metavar="RUN", help="start from this run's model.safetensors")
        s.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
        s.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer folder copied into the run")
        s.add_argument("--stop-at-step", type=int, default=None, help="checkpoint and exit after this step")
        s.add_argument("--no-progress", action="store_true", help="no progress bar")
        if stage == "distill":
            s.add_argument("--teacher", default=None, metavar="RUN",
                           help="the teacher run (same tokenizer; shortcut for --set distill.teacher=RUN)")
        s.set_defaults(func=_cmd_train)
    td = sub.add_parser("teacher-data", help="sequence-level distillation data: a teacher run's answers (with their "
                        "<think> traces) to a prompts file, as SFT conversations")
    td.add_argument("teacher", metavar="TEACHER_RUN")
    td.add_argument("--prompts", required=True, help='JSON lines with "prompt" (text or messages), e.g. synth prompt_*.jsonl')
    td.add_argument("--out", required=True, help="SFT JSON lines to write (then: prepare --kind sft, train sft/distill)")
    td.add_argument("--samples", type=int, default=1, help="answers per prompt (different seeds when sampling)")
    add_sampling_args(td, default_temperature=0.0, default_top_p=1.0, default_seed=0)
    td.add_argument("--check", action="store_true",
                    help="keep only answers answers.check_answer accepts (needs answer/task columns): rejection sampling")
    td.set_defaults(func=_cmd_teacher_data)
    pl = sub.add_parser("plot", help="draw RUN/loss.png from RUN/metrics.jsonl")
    pl.add_argument("run")
    pl.set_defaults(func=_cmd_plot)
    lo = subparsers.add_parser("lora", help="LoRA adapter runs: merge into a plain run")
    lsub = lo.add_subparsers(dest="lora_command", metavar="SUBCOMMAND")
    lo.set_defaults(func=lambda args: (lo.print_help(), 2)[1])
    m = lsub.add_parser("merge", help="fold a LoRA run's adapters into its base weights and write a plain run folder")
    m.add_argument("run", help="the LoRA run folder (adapter_config.json + adapter_model.safetensors)")
    m.add_argument("--out", required=True, help="folder for the merged run (model.safetensors + config + tokenizer)")
    m.set_defaults(func=_cmd_lora_merge)


__all__ = ["add_cli"]
