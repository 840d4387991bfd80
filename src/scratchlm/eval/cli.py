"""`scratchlm eval RUN --tasks ppl,bpb,mc,gen,synth,winrate` and `scratchlm report RUN_DIR... --out DIR`: the
arguments only; `eval/evaluate.py` (`evaluate_run`) and `eval/report.py` (`write_report`) do the work."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _cmd_eval(args: argparse.Namespace) -> int:
    from scratchlm.eval.evaluate import evaluate_run, format_table, parse_tasks

    scaling = _scaling_kwargs(args)  # its flags checked before anything runs
    result = evaluate_run(args.run, parse_tasks(args.tasks), data=args.data, mc=args.mc, mc_layout=args.mc_layout,
                          mc_style=args.mc_style,
                          fewshot=args.fewshot, fewshot_from=args.fewshot_from, gen=args.gen, synth=args.synth,
                          limit=args.limit, max_windows=args.max_windows, max_new_tokens=args.max_new_tokens,
                          vs=args.vs, judge=args.judge, prompts=args.prompts,
                          kv_cache_dtype=args.kv_cache_dtype)
    if scaling is not None:
        from scratchlm.eval.scaling import evaluate_run_scaling

        result["scaling"] = evaluate_run_scaling(args.run, args.synth, **scaling)
    out = Path(args.out) if args.out else Path(args.run) / "eval.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_table(result))
    if "scaling" in result:
        from scratchlm.eval.scaling import format_scaling

        print(format_scaling(result["scaling"]))
    print(f"wrote {out}")
    return 0


def _scaling_kwargs(args: argparse.Namespace) -> dict | None:
    """--self-consistency N / --best-of N checked, as eval/scaling.py's evaluate_run_scaling arguments (None: no
    scaling asked for)."""
    sc, bo = args.self_consistency, args.best_of
    if sc is None and bo is None:
        return None
    for flag, v in (("--self-consistency", sc), ("--best-of", bo)):
        if v is not None and not 1 <= v <= MAX_SCALING_N:
            raise ValueError(f"{flag} {v}: N must be between 1 and {MAX_SCALING_N}")
    if sc and bo and sc != bo:
        raise ValueError(f"--self-consistency {sc} and --best-of {bo}: give the same N (both pick from one set of samples)")
    if bo and args.reward_run and not (Path(args.reward_run) / "config.toml").is_file():
        raise ValueError(f"--reward-run {args.reward_run}: no such run folder (no config.toml)")
    if bo and not (args.reward_run or args.verifier):
        raise ValueError("--best-of N needs --reward-run REWARD_RUN (a reward-model run, e.g. the demo's RUNS/reward) "
                         "or --verifier NAME")
    if not args.synth:
        raise ValueError("--self-consistency / --best-of need --synth PROMPT_FILE (e.g. DATA/synth/prompt_val.jsonl)")
    tasks = {t.strip() for t in args.scaling_tasks.split(",") if t.strip()} if args.scaling_tasks else None
    return {"n": sc or bo, "reward_run": args.reward_run if bo else None, "verifier": args.verifier if bo else None,
            "tasks": tasks, "per_task": args.limit,
            "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
            "max_new_tokens": args.max_new_tokens}


MAX_SCALING_N = 64  # samples per prompt: the offline engine decodes up to 64 sequences together


def add_cli(subparsers: Any) -> None:
    """Register `scratchlm eval` and `scratchlm report`."""
    from scratchlm.engine.cli import add_kv_cache_arg
    from scratchlm.eval.evaluate import TASKS
    from scratchlm.eval.multiple_choice import LAYOUTS

    p = subparsers.add_parser("eval", help="perplexity, bits per byte, multiple choice, generation metrics of a run")
    p.add_argument("run", help="run folder")
    p.add_argument("--tasks", default="ppl,mc", help=f"comma-separated, from {', '.join(TASKS)} (default ppl,mc)")
    p.add_argument("--data", default=None, help="validation shard folder for ppl/bpb (default: the run's train.val_data)")
    p.add_argument("--mc", default=None, help="multiple-choice jsonl, or MMLU/C-Eval/CMMLU csv file or folder "
                   "(default: the built-in bilingual set)")
    p.add_argument("--mc-layout", default="auto", choices=LAYOUTS, help="file layout of --mc (default: guessed)")
    p.add_argument("--mc-style", default="text", choices=("text", "letters"),
                   help="score each choice's text (default) or list the options and score the letters (MMLU style)")
    p.add_argument("--fewshot", type=int, default=0,
                   help="examples before each question (mc), or earlier chat turns (gen) (default 0)")
    p.add_argument("--fewshot-from", default=None, help="take few-shot examples from this file (a dev split)")
    p.add_argument("--gen", default=None, help="generation jsonl: {\"prompt\", \"reference\"} per line")
    p.add_argument("--synth", default=None, help="synthetic held-out prompt file: DATA/synth/prompt_test.jsonl to report, "
                   "prompt_val.jsonl (the dev split) to choose settings on")
    p.add_argument("--vs", default=None, metavar="RUN", help="winrate: the run to compare against")
    p.add_argument("--judge", default=None, metavar="REWARD_RUN", help="winrate: reward-model run that judges")
    p.add_argument("--prompts", default=None, help="winrate: jsonl of {\"prompt\"} (a string or chat messages)")
    p.add_argument("--limit", type=int, default=None, help="at most this many items per task (per subject for mc)")
    p.add_argument("--max-windows", type=int, default=200, help="validation windows for ppl/bpb (default 200)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="generation length for gen/synth (default 48)")
    p.add_argument("--out", default=None, help="json file to write (default RUN/eval.json)")
    g = p.add_argument_group("inference-time scaling (on the --synth prompts; docs/inference_scaling.md)")
    g.add_argument("--self-consistency", type=int, default=None, metavar="N",
                   help="also score N samples per prompt (one shared prefill) picked by a majority vote on the answer")
    g.add_argument("--best-of", type=int, default=None, metavar="N",
                   help="also score N samples per prompt picked by the highest reward of --reward-run")
    g.add_argument("--reward-run", default=None, metavar="RUN", help="reward-model run that scores --best-of samples")
    g.add_argument("--verifier", default=None, choices=("addition_trace",),
                   help="verifier function that scores --best-of samples (addition_trace: the reply's own "
                        "column-addition trace is checked, never against the answer)")
    g.add_argument("--scaling-tasks", default=None, metavar="KEYS",
                   help="comma-separated tasks or score keys to scale (default every checkable one), "
                        "e.g. 'add2 (unseen phrasings),author'")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the N samples (default 1.0)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus filter of the N samples (default 1.0: off)")
    g.add_argument("--seed", type=int, default=0, help="sample i of a prompt is seeded SEED + i (default 0)")
    add_kv_cache_arg(p)  # gen, synth and winrate generate; ppl, bpb and mc score whole texts in one forward
    p.set_defaults(func=_cmd_eval)
    _add_report_cli(subparsers)


def _cmd_report(args: argparse.Namespace) -> int:
    summary = None
    if args.summary:
        try:
            summary = json.loads(Path(args.summary).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{args.summary}:{e.lineno}: bad JSON ({e.msg})") from None
    from scratchlm.eval.report import write_report

    path = write_report([Path(r) for r in args.runs], Path(args.out), summary, evaluate=args.eval,
                        val_data=Path(args.val_data) if args.val_data else None)
    print(f"wrote {path}")
    return 0


def _add_report_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="report card of one or more stages: report.md + loss and metric charts")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, in stage order (pretrain sft ...)")
    p.add_argument("--out", required=True, help="folder for report.md and the PNGs")
    p.add_argument("--summary", default=None, help="the demo's summary.json (held-out accuracy, samples, chats)")
    p.add_argument("--eval", action="store_true", help="score every stage: built-in multiple choice, bits per byte")
    p.add_argument("--val-data", default=None, help="shared validation shards for --eval (default: the first run's)")
    p.set_defaults(func=_cmd_report)
