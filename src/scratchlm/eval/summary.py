"""The one renderer of the demo's summary (summary.json): its numbers as (metric, value) rows and its RAG answers
as text lines. The demo prints them as a rich table (`print_summary`); the report card writes them as markdown."""

from __future__ import annotations

from typing import Any


def summary_title(summary: dict[str, Any]) -> str:
    """"scratchlm demo — N parameters, M min" (what the summary knows of it)."""
    parts = [f"{summary['params']:,} parameters"] if "params" in summary else []
    if "total" in summary.get("seconds", {}):
        parts.append(f"{summary['seconds']['total'] / 60:.1f} min")
    return "scratchlm demo — " + ", ".join(parts) if parts else "scratchlm demo"


def split_name(summary: dict[str, Any]) -> str:
    """Which split the summary's accuracies are on: "test" (the demo's default, never tuned on) or "val (dev)"
    (summaries written before the test split existed were on val)."""
    split = summary.get("settings", {}).get("eval_split", "val")
    return "test" if split == "test" else "val (dev)"


def _task_rows(stage: str, tasks: dict[str, list[float]], held: str) -> list[tuple[str, str]]:
    return [(f"{stage}: {held} {task} before → after", f"{before:.3f} → {after:.3f}")
            for task, (before, after) in tasks.items()]


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Every number of the summary that has one, as (metric, formatted value), in the order they are read."""
    rows = []
    held = split_name(summary)
    counts = summary.get("counts", {})
    for task in sorted(counts):
        c, n = counts[task]
        rows.append((f"{held} accuracy: {task}", f"{c / n if n else 0.0:.3f} ({c}/{n})"))
    if all(k in summary for k in ("val_ppl_pretrain", "val_ppl_sft", "val_ppl_unigram")):
        pre, sft, uni = summary["val_ppl_pretrain"], summary["val_ppl_sft"], summary["val_ppl_unigram"]
        rows += [("val perplexity: pretrained model", f"{pre:.1f}"), ("val perplexity: after SFT", f"{sft:.1f}"),
                 ("val perplexity: unigram model", f"{uni:.1f}"), ("ratio (pretrained / unigram)", f"{pre / uni:.3f}"),
                 ("ratio (after SFT / pretrained)", f"{sft / pre:.2f}")]
    conv = summary.get("conversation")
    if conv:
        for task in sorted(conv["alone"]):
            acc = [conv[m][task][0] / max(1, conv[m][task][1]) for m in ("alone", "third_turn", "think_off")]
            rows.append((f"{held} {task} ({conv['alone'][task][1]} questions): alone / as a chat's third turn / "
                         "thinking off", " / ".join(f"{a:.3f}" for a in acc)))
    for mode, rep in summary.get("open_ended", {}).items():
        rows.append((f"{held} open-ended requests ({rep['replies']}, chat sampling, {mode}): without stutter "
                     f"(run ≤ {rep['max_run']}, distinct-2 ≥ {rep['min_distinct2']}) / identity line",
                     f"{rep['pass']:.3f} / {rep['identity_line']:.3f}"))
    for label, tu in (("tool use (tool chats in SFT)", summary.get("tool_use_accuracy")),
                      ("tools step", summary.get("tools"))):
        if tu:
            rows.append((f"{label}: {held} 4-5 digit arithmetic ({tu['n']} problems), the agent with "
                         f"{'+'.join(tu['tools'])} / the same model alone / runs that called the calculator",
                         f"{tu['agent']['all']:.3f} / {tu['direct']['all']:.3f} / {tu['called_calculator']['all']:.3f}"))
            rows += _task_rows(label + " (from SFT)", tu.get("tasks", {}), held)
    if "lora" in summary:
        lo = summary["lora"]
        rows += [(f"LoRA: {held} identity answers {lo['name']!r}", f"{lo['identity_new_name']:.3f}"),
                 (f"LoRA: {held} add2 before → after", f"{lo['add2_before']:.3f} → {lo['add2_after']:.3f}"),
                 (f"LoRA: {held} add2 unseen phrasings before → after",
                  f"{lo['add2_unseen_before']:.3f} → {lo['add2_unseen_after']:.3f}")]
    if "reward" in summary:
        rw = summary["reward"]
        rows.append((f"reward model: {held} pair accuracy ({rw['pairs']} pairs), untrained head → trained",
                     f"{rw['accuracy_before']:.3f} → {rw['accuracy_after']:.3f}"))
    if "dpo" in summary:
        d = summary["dpo"]
        # The SFT model is DPO's reference, so its implicit reward is 0 on every pair: 0 by definition, not measured.
        rows += [(f"DPO: {held} implicit-reward accuracy ({d['pairs']} pairs), SFT → DPO",
                  f"0 (by definition) → {d['implicit_accuracy']:.3f}"),
                 ("DPO: own log-probs prefer the chosen reply, SFT → DPO",
                  f"{d['logp_accuracy_before']:.3f} → {d['logp_accuracy_after']:.3f}"), *_task_rows("DPO", d["tasks"], held)]
    if "grpo" in summary:
        g = summary["grpo"]
        if g["reward_log"]:
            rows.append(("GRPO: mean rollout reward, first → last tenth of the steps",
                         f"{g['reward_log'][0]:.3f} → {g['reward_log'][1]:.3f}"))
        rows.append(("GRPO's cold start: SFT steps until the dev prompts were right sometimes",
                     f"{g['cold_start_steps']} ({g['cold_start_dev'][-1][1]:.2f} right)"))
        rows += _task_rows("GRPO's cold start (from SFT)", g["cold_start"], held)
        rows += _task_rows("GRPO (from the cold start)", g["tasks"], held)
    if "ppo" in summary:
        pp = summary["ppo"]
        chain = [c.upper() for c in pp.get("chain", ["sft", "ppo"])]  # results written before the chain existed
        rows += [(f"PPO: {held} mean reward ({pp['prompts']} prompts × {pp['samples']} samples), {chain[-2]} → PPO",
                  f"{pp['reward'][0]:.2f} → {pp['reward'][1]:.2f}"),
                 ("PPO: the same for greedy replies", f"{pp['reward_greedy'][0]:.2f} → {pp['reward_greedy'][1]:.2f}"),
                 # before = the SFT model: PPO's model is the last of the chain, the demo's final chat model
                 *_task_rows(f"final model = PPO ({' → '.join(chain)})", pp["tasks"], held)]
    if "distill" in summary:
        d = summary["distill"]
        p = d["params"]
        rows += [(f"distill: val chat perplexity, teacher ({p['teacher'] / 1e6:.1f}M)", f"{d['val_ppl']['teacher']:.2f}"),
                 (f"distill: student ({p['distill'] / 1e6:.1f}M) with KD / alone, same steps",
                  f"{d['val_ppl']['distill']:.2f} / {d['val_ppl']['baseline']:.2f}")]
        rows += [(f"distill: {held} {task}, teacher / student with KD / alone",
                  " / ".join(f"{d['tasks'][k].get(task, 0.0):.3f}" for k in ("teacher", "distill", "baseline")))
                 for task in d["tasks"]["teacher"]]
    rows += [(f"time: {k}", f"{v:.0f} s") for k, v in summary.get("seconds", {}).items()]
    return rows


def rag_lines(summary: dict[str, Any]) -> list[str]:
    """The RAG step's questions, sources and answers as text lines ([] when the summary has none)."""
    if "rag" not in summary:
        return []
    rag = summary["rag"]
    lines = [f"RAG ({rag['embedder']} + BM25 over {rag['chunks']} chunks of the built-in corpus; the SFT model "
             "answers from the top 3):"]
    for q in rag["questions"]:
        found = "the right document retrieved" if q["right_doc_retrieved"] else "the right document NOT retrieved"
        lines.append(f"  user: {q['question']}   (expected: {q['expected']}; {found})\n"
                     f"      sources: {' '.join(q['sources'])}\n      assistant: {q['answer']}  "
                     f"{'✓' if q['correct'] else '✗'}\n      without RAG: {q['answer_without_rag']}")
    return lines


def print_summary(summary: dict[str, Any]) -> None:
    """The summary table, the RAG answers and the sample chats on the terminal (rich)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(title=summary_title(summary))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in summary_rows(summary):
        table.add_row(metric, value)
    console.print(table)
    rag = rag_lines(summary)
    if rag:
        console.print(f"[bold]RAG[/bold]{escape(rag[0][3:])}")
        for line in rag[1:]:
            console.print(escape(line))
    console.print(f"[bold]sample chats[/bold] ({split_name(summary)} prompts, greedy):")
    for g in summary.get("samples", []):
        mark = {True: "✓", False: "✗", None: ""}[g["ok"]]
        console.print(escape(f"  [{g['task']}] user: {g['prompt']}\n      assistant: {g['reply']}  {mark}"))
    console.print("[bold]chat[/bold] (requests as a person would type them, `scratchlm chat`'s sampling):")
    for c in summary.get("chats", []):
        console.print(escape(f"  user: {c['prompt']}\n      assistant: {c['reply']}"))
