"""`scratchlm train STAGE|plot` (the stages of scratchlm/stages.py): thin wrappers around plain functions."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scratchlm.config import Config, ConfigError, load_config, load_run_config, read_toml, upgrade_saved_config

if TYPE_CHECKING:  # the loop imports torch: only the commands that train load it, not `--help`
    from scratchlm.train.loop import TrainResult


def resolve_train_config(
    objective: str,
    preset: str | None,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    data: str | None = None,
    init_from: str | Path | None = None,
    resume: bool = False,
) -> Config:
    """The run's config: preset (or, on --resume without --config, the run's own config.toml),
    the model shape of --init-from, then --data and --set overrides."""
    base: dict[str, Any] = {"train": {"objective": objective}}
    if init_from is not None:
        # the weights decide the shape: a preset's model section must not silently disagree with them
        base["model"] = load_run_config(init_from).to_dict()["model"]
    if data is not None:
        base["train"]["data"] = str(data)
    if preset is None and resume and out is not None and (Path(out) / "config.toml").exists():
        saved = upgrade_saved_config(read_toml(Path(out) / "config.toml"))
        saved.setdefault("train", {}).update(base["train"])
        return load_config(None, overrides, base=saved)
    return load_config(preset or "tiny", overrides, base=base)


def find_tokenizer_dir(cfg: Config, init_from: str | Path | None, explicit: str | Path | None) -> Path | None:
    """Where the run's tokenizer files come from: --tokenizer, the --init-from run, or the data's meta."""
    cands: list[Path] = []
    if explicit:
        if not (Path(explicit) / "tokenizer.json").exists():
            raise FileNotFoundError(f"--tokenizer {explicit}: no tokenizer.json there")
        return Path(explicit)
    if init_from:
        cands.append(Path(init_from))
    if cfg.train.data:
        data = Path(cfg.train.data)
        cands.append(data)
        meta = data / "meta.json"
        if meta.exists():
            tok = json.loads(meta.read_text(encoding="utf-8")).get("tokenizer_dir") or json.loads(
                meta.read_text(encoding="utf-8")).get("tokenizer")
            if isinstance(tok, str):
                cands.append(Path(tok))
    for c in cands:
        if (c / "tokenizer.json").exists():
            return c
    return None


def check_same_tokenizer(init_from: str | Path, data: str | Path, flag: str = "--init-from") -> None:
    """Refuse to continue (or distil from) a run on data prepared with another tokenizer (its ids would mean other
    tokens); `flag` names the option that gave the run."""
    from scratchlm.shards.prepare import tokenizer_hash

    tok, meta = Path(init_from) / "tokenizer.json", Path(data) / "meta.json" if data else None
    if meta is None or not tok.exists() or not meta.exists():
        return
    data_hash = json.loads(meta.read_text(encoding="utf-8")).get("tokenizer_hash")
    run_hash = tokenizer_hash(tok)
    if data_hash and data_hash != run_hash:
        raise ConfigError(f"{flag} {init_from}: its tokenizer.json (sha256 {run_hash[:16]}…) is not the one "
                          f"{meta} was prepared with (sha256 {data_hash[:16]}…); prepare the data again with "
                          f"--tokenizer {init_from}")


def run_train(
    objective: str,
    out: str | Path,
    preset: str | None = None,
    overrides: list[str] | None = None,
    data: str | None = None,
    init_from: str | Path | None = None,
    resume: bool = False,
    tokenizer: str | Path | None = None,
    stop_at_step: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one stage (`pretrain`, `sft`, ...) into run folder `out`."""
    from scratchlm.runs import build_model
    from scratchlm.train.loop import train
    from scratchlm.train.objectives import make_objective

    from scratchlm.stages import get_stage

    if get_stage(objective).needs_init and init_from is None and not resume:
        raise ConfigError(f"scratchlm train {objective} starts from a trained model: pass --init-from RUN "
                          "(e.g. an SFT run)")
    cfg = resolve_train_config(objective, preset, overrides, out, data, init_from, resume)
    if init_from is not None and not resume:
        check_same_tokenizer(init_from, cfg.train.data)
    tok_dir = find_tokenizer_dir(cfg, init_from, tokenizer)
    obj = make_objective(cfg)
    model = build_model(cfg)
    return train(cfg, obj, out, model, init_from=None if resume else init_from, resume=resume,
                 tokenizer_dir=tok_dir, stop_at_step=stop_at_step, progress=progress)


def _cmd_train(args: argparse.Namespace) -> int:
    if getattr(args, "teacher", None):
        args.set = [*args.set, f"distill.teacher={args.teacher}"]
    result = run_train(args.stage, args.out, args.config, args.set, args.data, args.init_from, args.resume,
                       args.tokenizer, args.stop_at_step, not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
        val = f", val loss {result.val[-1][1]:.4f}" if result.val else ""
        print(f"{result.status}: step {result.step}, loss {last}{val}, {result.tokens} tokens "
              f"in {result.seconds:.1f}s → {result.out_dir}")
    return 0 if result.status in ("done", "stopped") else 130


def _cmd_teacher_data(args: argparse.Namespace) -> int:
    from scratchlm.train.distill import teacher_answers

    if args.samples < 1 or args.max_new_tokens < 1:
        raise ValueError("--samples and --max-new-tokens must be at least 1")
    c = teacher_answers(args.teacher, args.prompts, args.out, args.samples, args.temperature, args.max_new_tokens,
                        args.check, args.seed)
    print(f"{args.out}: {c['kept']} conversations from {c['answers']} teacher answers to {c['prompts']} prompts"
          + (f" ({c['too_long']} prompts too long for the teacher's context skipped)" if c["too_long"] else "")
          + (" (only answers that check_answer accepts)" if args.check else ""))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from scratchlm.train.loop import plot_metrics

    print(plot_metrics(args.run))
    return 0


def add_cli(subparsers: Any) -> None:
    """Register `scratchlm train ...`."""
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
    td.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    td.add_argument("--max-new-tokens", type=int, default=128)
    td.add_argument("--check", action="store_true",
                    help="keep only answers synth.check_answer accepts (needs answer/task columns): rejection sampling")
    td.add_argument("--seed", type=int, default=0)
    td.set_defaults(func=_cmd_teacher_data)
    pl = sub.add_parser("plot", help="draw RUN/loss.png from RUN/metrics.jsonl")
    pl.add_argument("run")
    pl.set_defaults(func=_cmd_plot)


__all__ = ["run_train", "resolve_train_config", "find_tokenizer_dir", "add_cli", "ConfigError"]
