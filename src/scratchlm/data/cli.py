"""`scratchlm data ...`: look at the built-in corpus (`data info`) and write synthetic tasks (`data synth`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def data_info(args: argparse.Namespace) -> int:
    """Print documents, characters and the Chinese/English share of each corpus split."""
    from rich.console import Console
    from rich.table import Table

    from scratchlm.data.corpus import CORPUS_DIR, SPLITS, corpus_stats

    table = Table(title="built-in corpus")
    for col in ("split", "docs", "chars", "poems", "zh share", "en share", "CJK chars"):
        table.add_column(col, justify="left" if col == "split" else "right", no_wrap=True)
    for split in SPLITS:
        s = corpus_stats(split)
        chars = max(s["chars"], 1)
        share = {lang: s["by_lang"].get(lang, {"chars": 0})["chars"] / chars for lang in ("zh", "en")}
        table.add_row(
            split, f"{s['docs']:,}", f"{s['chars']:,}", f"{s['poems']:,}",
            f"{share['zh']:.1%}", f"{share['en']:.1%}", f"{s['cjk_chars'] / chars:.1%}",
        )
    console = Console()
    console.print(table)
    console.print(f"zh/en share: of the characters, those in documents of that language; CJK chars: those that "
                  f"are Chinese ideographs or CJK punctuation. Files and licences (NOTICE): {CORPUS_DIR}")
    return 0


def parse_tasks(spec: str | None) -> dict[str, tuple[int, int] | int] | None:
    """`add2,next_line=500,author=300:100` → {"add2": default sizes, "next_line": 500, "author": (300, 100)}."""
    if not spec:
        return None
    from scratchlm.data.synth import DEFAULT_TASKS

    out: dict[str, tuple[int, ...] | int] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        task, _, size = part.partition("=")
        try:
            if not size:
                out[task] = DEFAULT_TASKS.get(task, (1000, 200))
            elif ":" in size:
                parts = size.split(":")
                if len(parts) > 3:
                    raise ValueError
                out[task] = tuple(int(x) for x in parts)
            else:
                out[task] = int(size)
        except ValueError:
            raise ValueError(f"--tasks: bad size in {part!r}; expected TASK, TASK=N_TRAIN, "
                             "TASK=N_TRAIN:N_VAL or TASK=N_TRAIN:N_VAL:N_TEST") from None
    return out


def _prob(text: str) -> float:
    """argparse type: a probability in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{v} is not in [0, 1]")
    return v


def _task_share(text: str) -> tuple[str, float]:
    """argparse type: TASK=P with P a probability in [0, 1]."""
    task, eq, share = text.partition("=")
    if not eq or not task:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TASK=P, e.g. identity=0.4")
    return task, _prob(share)


def data_synth(args: argparse.Namespace) -> int:
    """Write the synthetic task files and print the counts per task."""
    from rich.console import Console
    from rich.table import Table

    from scratchlm.data.synth import build_synth, resolve_sizes

    tasks = parse_tasks(args.tasks)
    paths = build_synth(args.out, seed=args.seed, name=args.name, tasks=tasks, n_train=args.n_train, n_val=args.n_val,
                        n_test=args.n_test, mixed_turns_prob=args.mixed_turns, think_off_prob=args.think_off,
                        conversation_by_task=dict(args.task_conversations))
    sizes = resolve_sizes(tasks, args.n_train, args.n_val, args.n_test)
    table = Table(title=f"synthetic tasks → {args.out} (seed {args.seed}, name {args.name!r})")
    for col in ("task", "train", "val (dev)", "test"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, counts in sizes.items():
        table.add_row(task, *map(str, counts))
    table.add_row("total", *(str(sum(c[i] for c in sizes.values())) for i in range(3)))
    console = Console()
    console.print(table)
    console.print("files (one record per example in each format): " + ", ".join(p.name for p in paths.values()))
    return 0


def data_tools(args: argparse.Namespace) -> int:
    """Write the tool-use SFT set (agent/tool_data.py) and print its counts."""
    from scratchlm.agent.tool_data import CALC_TASKS, build_tool_sft

    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        raise SystemExit(f"--sizes: expected TRAIN,VAL,TEST (integers), got {args.sizes!r}") from None
    fewest, _, most = args.questions.partition(":")
    try:
        questions = (int(fewest), int(most or fewest))
    except ValueError:
        raise SystemExit(f"--questions: expected FEWEST:MOST (integers), got {args.questions!r}") from None
    try:
        paths = build_tool_sft(args.out, sizes, direct_share=args.direct_share, seed=args.seed, name=args.name,
                               questions=questions,
                               calc_tasks=[x.strip() for x in args.calc_tasks.split(",") if x.strip()] or CALC_TASKS)
    except ValueError as e:
        raise SystemExit(f"scratchlm data tools: {e}") from None
    print((args.out / "meta.json").read_text(encoding="utf-8"), end="")
    print("files: " + ", ".join(p.name for p in paths.values()))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `scratchlm data info`, `scratchlm data synth` and `scratchlm data tools`."""
    p = subparsers.add_parser("data", help="the built-in corpus and synthetic tasks")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    info = sub.add_parser("info", help="documents, characters and zh/en share of the built-in corpus")
    info.set_defaults(func=data_info)

    synth = sub.add_parser("synth", help="write synthetic tasks (SFT, preference, prompt+answer) with checkable answers")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--name", default="scratchlm", help="the model's name in identity answers")
    synth.add_argument("--n-train", type=int, default=None, help="training examples per task (overrides defaults)")
    synth.add_argument("--n-val", type=int, default=None,
                       help="val (dev) examples per task, the split to choose settings on (overrides defaults)")
    synth.add_argument("--n-test", type=int, default=None,
                       help="test examples per task, the split to report and never tune on (default: as many as val)")
    synth.add_argument("--tasks", default=None,
                       help="comma list, each TASK[=N_TRAIN[:N_VAL[:N_TEST]]], e.g. add2=3000:200:200,identity,arith2 "
                            "(default: add2,next_line,author,identity)")
    synth.add_argument("--mixed-turns", type=_prob, default=0.0, metavar="P",
                       help="share of SFT chats given 1-3 more turns of any task, some referring back to the previous "
                            "answer (default 0)")
    synth.add_argument("--think-off", type=_prob, default=0.0, metavar="P",
                       help="share of SFT chats written thinking off (<think></think> + the answer), as the chat CLI's "
                            "/think off and the API's enable_thinking=false prompt them (default 0)")
    synth.add_argument("--task-conversations", type=_task_share, action="append", default=[], metavar="TASK=P",
                       help="give TASK's SFT chats share P of both of the above instead (repeatable): a task of few "
                            "chats gets few conversations at the global share, e.g. identity=0.4")
    synth.set_defaults(func=data_synth)

    tools = sub.add_parser("tools", help="write the tool-use SFT set: 4+-digit arithmetic through the calculator, "
                                         "and chats answered without a tool (tools listed)")
    tools.add_argument("--out", type=Path, required=True, help="output folder")
    tools.add_argument("--sizes", default="2000,100,100", help="chats per split: TRAIN,VAL,TEST (default 2000,100,100)")
    tools.add_argument("--direct-share", type=_prob, default=0.3, metavar="P",
                       help="share of questions that need no tool (identity, poems), answered directly (default 0.3)")
    tools.add_argument("--questions", default="1:1", metavar="FEWEST:MOST",
                       help="questions per chat, each with its own call or direct answer (default 1:1; the demo's "
                            "tools step uses 1:4)")
    tools.add_argument("--calc-tasks", default="mul4,add4,sub4,mul5,add5", metavar="TASKS",
                       help="the calculator chats' arithmetic tasks, <op><digits> with 4+ digits (default "
                            "mul4,add4,sub4,mul5,add5)")
    tools.add_argument("--seed", type=int, default=0)
    tools.add_argument("--name", default="scratchlm", help="the model's name in identity answers")
    tools.set_defaults(func=data_tools)
