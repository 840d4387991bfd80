"""`scratchlm eval RUN --tasks ppl,bpb,mc,gen,synth`: one run's numbers as json plus a table.

`evaluate_run` is the function behind it (the report card and the demo call it):
- ppl, bpb: over a prepared validation shard folder (`--data`, default the run's train.val_data);
- mc: multiple choice by log-likelihood (`--mc FILE|DIR`, default the built-in bilingual set; MMLU / C-Eval /
  CMMLU layouts are recognised), optionally few-shot;
- gen: greedy replies to `{"prompt", "reference"}` jsonl (a synth prompt file's "answer" counts as the
  reference) scored by exact match, token F1, ROUGE-L and BLEU;
- synth: held-out synthetic-task accuracy (`--synth` prompt file, checked by synth.check_answer);
- winrate: this run's greedy replies against `--vs RUN`'s on `--prompts`, judged by the reward-model run
  `--judge` in both orders (eval/winrate.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from scratchlm.data.jsonl import iter_jsonl

TASKS = ("ppl", "bpb", "mc", "gen", "synth", "winrate")


def parse_tasks(text: str) -> list[str]:
    """'ppl,mc' → ['ppl', 'mc']; unknown names are an error listing the known ones."""
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"--tasks: unknown task(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(TASKS)}")
    return tasks


def load_gen_items(path: Path) -> list[dict[str, Any]]:
    """[{"messages" | "text", "reference"}] from jsonl: "prompt" a string or a chat list, "reference" (or "answer")."""
    items = []
    for n, rec in iter_jsonl(Path(path).read_text(encoding="utf-8").splitlines(), path):
        ref = rec.get("reference", rec.get("answer")) if isinstance(rec, dict) else None
        prompt = rec.get("prompt") if isinstance(rec, dict) else None
        if not isinstance(ref, str):
            raise ValueError(f"{path}:{n}: field 'reference' (or 'answer') must be a string")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list) or not prompt:
            raise ValueError(f"{path}:{n}: field 'prompt' must be a string or a list of chat messages")
        items.append({"messages": prompt, "reference": ref, "task": rec.get("task", "")})
    return items


def with_shots(item: dict, items: list[dict], i: int, k: int) -> dict:
    """Few-shot for chat prompts: k other items (same task first) as earlier user/assistant turns."""
    if k <= 0:
        return item
    others = [it for j, it in enumerate(items) if j != i]
    others.sort(key=lambda it: it["task"] != item["task"])  # stable: same task first, file order kept
    turns = [m for it in others[:k] for m in (*it["messages"][-1:], {"role": "assistant", "content": it["reference"]})]
    return {**item, "messages": turns + item["messages"]}


def per_subject(items: list[Any], limit: int | None) -> list[Any]:
    """The first `limit` items of every subject (all when limit is None), in their order."""
    if limit is None:
        return items
    seen: dict[str, int] = {}
    out = []
    for it in items:
        seen[it.subject] = seen.get(it.subject, 0) + 1
        if seen[it.subject] <= limit:
            out.append(it)
    return out


def generate_replies(model: Any, tokenizer: Any, items: list[dict], max_new_tokens: int, batch: int = 32) -> list[str]:
    """Greedy replies to chat prompts (the assistant turn opened by the chat template)."""
    from scratchlm.engine.offline import LLM
    from scratchlm.engine.sampling import SamplingParams

    window = int(model.config.max_seq_len) - max_new_tokens
    ids = [tokenizer.encode_chat(it["messages"], add_generation_prompt=True)[0][-window:] for it in items]
    engine, params = LLM(model, tokenizer), SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    out: list[str] = []
    for b in range(0, len(ids), batch):
        out += [tokenizer.decode(o, skip_special_tokens=True) for o in engine.generate(ids[b:b + batch], params)]
    return out


def evaluate_run(run_dir: str | Path, tasks: list[str], data: str | Path | None = None, mc: str | Path | None = None,
                 mc_layout: str = "auto", mc_style: str = "text", fewshot: int = 0,
                 fewshot_from: str | Path | None = None,
                 gen: str | Path | None = None, synth: str | Path | None = None, limit: int | None = None,
                 max_windows: int = 200, max_new_tokens: int = 48, per_task: int = 50,
                 vs: str | Path | None = None, judge: str | Path | None = None,
                 prompts: str | Path | None = None) -> dict[str, Any]:
    """The run's numbers for `tasks` as a json-able dict {"run", task: {...}}; samples under "samples"."""
    import torch

    from scratchlm.runs import load_run

    run_dir = Path(run_dir)
    model, tokenizer, cfg = load_run(run_dir)
    if tokenizer is None:
        raise FileNotFoundError(f"{run_dir}: no tokenizer.json; evaluation needs the run's tokenizer")
    if cfg.train.objective == "reward":
        raise ValueError(f"{run_dir}: a reward model scores replies; it is not a language model to evaluate "
                         "(use it as the judge of a win-rate)")
    result: dict[str, Any] = {"run": str(run_dir), "params": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        if "ppl" in tasks or "bpb" in tasks:
            from scratchlm.eval.perplexity import ppl_bpb

            val = Path(data or cfg.train.val_data or "")
            if not data and not cfg.train.val_data:
                raise ValueError(f"{run_dir}: config.toml has no train.val_data; pass --data VAL_SHARDS for ppl/bpb")
            result["ppl"] = {"data": str(val), **ppl_bpb(model, tokenizer, val, cfg.train.seq_len, max_windows)}
        if "mc" in tasks:
            from scratchlm.eval.multiple_choice import builtin_items, load_mc, score_mc

            from scratchlm.eval.multiple_choice import as_letters

            items = load_mc(mc, mc_layout) if mc else builtin_items()
            pool = load_mc(fewshot_from, mc_layout) if fewshot_from else None
            if mc_style == "letters":
                items, pool = [as_letters(i) for i in items], pool and [as_letters(i) for i in pool]
            elif mc_style != "text":
                raise ValueError(f"--mc-style {mc_style!r}: choose text or letters")
            scored = score_mc(model, tokenizer, per_subject(items, limit), fewshot=fewshot, pool=pool)
            scored.pop("predictions"), scored.pop("loglikelihoods")
            result["mc"] = {"data": str(mc or "builtin"), "style": mc_style, "fewshot": fewshot, **scored}
        if "gen" in tasks:
            from scratchlm.eval.text_metrics import generation_scores

            if not gen:
                raise ValueError("--tasks gen needs --gen FILE ({\"prompt\", \"reference\"} jsonl)")
            every = load_gen_items(Path(gen))
            items = [with_shots(it, every, i, fewshot) for i, it in enumerate(every)][:limit]
            replies = generate_replies(model, tokenizer, items, max_new_tokens)
            result["gen"] = {"data": str(gen), "fewshot": fewshot, **generation_scores(replies, [it["reference"] for it in items])}
            result.setdefault("samples", []).extend(
                {"prompt": it["messages"][-1]["content"], "reply": r, "reference": it["reference"]}
                for it, r in list(zip(items, replies))[:5])
        if "synth" in tasks:
            from scratchlm.eval.tasks import evaluate_tasks

            if not synth:
                raise ValueError("--tasks synth needs --synth PROMPT_FILE (e.g. DATA/synth/prompt_val.jsonl)")
            scores, _ = evaluate_tasks(model, tokenizer, Path(synth), per_task, max_new_tokens)
            result["synth"] = {task: {"acc": c / n, "correct": c, "n": n} for task, (c, n) in scores.items()}
        if "winrate" in tasks:
            from scratchlm.eval.winrate import compare_runs, load_prompts

            if not (vs and judge and prompts):
                raise ValueError("--tasks winrate needs --vs RUN, --judge REWARD_RUN and --prompts FILE")
            result["winrate"] = compare_runs(run_dir, vs, judge, load_prompts(Path(prompts))[:limit], max_new_tokens)
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain two-column table of the headline numbers of `evaluate_run`'s result."""
    rows: list[tuple[str, str]] = []
    if "ppl" in result:
        rows += [("val perplexity", f"{result['ppl']['ppl']:.2f}"), ("val bits per byte", f"{result['ppl']['bpb']:.4f}")]
    if "mc" in result:
        m = result["mc"]
        rows.append((f"multiple choice acc ({m['n']} items, {m['fewshot']}-shot, {m['style']})", f"{m['acc']:.3f}  (norm {m['acc_norm']:.3f})"))
        rows += [(f"  {s}", f"{v['acc']:.3f}  (n={v['n']})") for s, v in m["by_subject"].items()]
    if "gen" in result:
        g = result["gen"]
        rows += [(f"generation ({g['n']} prompts, {g['fewshot']}-shot) exact match", f"{g['exact_match']:.3f}"),
                 ("  token F1", f"{g['token_f1']:.3f}"), ("  ROUGE-L", f"{g['rougeL']:.3f}"), ("  BLEU", f"{g['bleu']:.2f}")]
    for task, v in result.get("synth", {}).items():
        rows.append((f"synth {task}", f"{v['acc']:.3f}  ({v['correct']}/{v['n']})"))
    if "winrate" in result:
        w = result["winrate"]
        rows.append((f"win-rate vs {w['b']} ({w['n']} prompts, both orders)",
                     f"{w['win_rate']:.3f}  ({w['wins']}W {w['ties']}T {w['losses']}L)"))
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_run(args.run, parse_tasks(args.tasks), data=args.data, mc=args.mc, mc_layout=args.mc_layout,
                          mc_style=args.mc_style,
                          fewshot=args.fewshot, fewshot_from=args.fewshot_from, gen=args.gen, synth=args.synth,
                          limit=args.limit, max_windows=args.max_windows, max_new_tokens=args.max_new_tokens,
                          vs=args.vs, judge=args.judge, prompts=args.prompts)
    out = Path(args.out) if args.out else Path(args.run) / "eval.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_table(result))
    print(f"wrote {out}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register `scratchlm eval`."""
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
    p.add_argument("--synth", default=None, help="synthetic held-out prompt file (DATA/synth/prompt_val.jsonl)")
    p.add_argument("--vs", default=None, metavar="RUN", help="winrate: the run to compare against")
    p.add_argument("--judge", default=None, metavar="REWARD_RUN", help="winrate: reward-model run that judges")
    p.add_argument("--prompts", default=None, help="winrate: jsonl of {\"prompt\"} (a string or chat messages)")
    p.add_argument("--limit", type=int, default=None, help="at most this many items per task (per subject for mc)")
    p.add_argument("--max-windows", type=int, default=200, help="validation windows for ppl/bpb (default 200)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="generation length for gen/synth (default 48)")
    p.add_argument("--out", default=None, help="json file to write (default RUN/eval.json)")
    p.set_defaults(func=_cmd_eval)
