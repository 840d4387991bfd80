"""The report card: `scratchlm report RUN_DIR... --out DIR` writes DIR/report.md with loss_curves.png and
metrics.png — model size and shape, data seen, time and throughput of every stage, every stage's metrics side
by side, and sample answers.

Numbers come from each run's metrics.jsonl (what training logged), the run's eval.json when `scratchlm eval`
wrote one, `evaluate=True` (built-in multiple choice and bits per byte on one shared validation set, so the
stages compare), and the demo's summary dict (held-out task accuracy, samples, chats) when given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


ACCURACY_KEYS = ("mc acc", "mc acc_norm")  # eval metrics on a 0-1 scale, drawn in the accuracy panel
# Asked of every stage by `evaluate=True` (greedy), so the report shows how answers change from stage to stage.
SAMPLE_PROMPTS = ("What is your name?", "What is 23 + 45?", "背诵一首李白的诗。", "Tell me a fortune.")


def train_and_val_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train records, validation records) of a run's metrics.jsonl; a bad line is an error naming file:line."""
    from scratchlm.runs import read_metrics

    train, val = [], []
    for rec in read_metrics(run_dir):
        if "loss" in rec:
            train.append(rec)
        elif any(k.startswith("val_") for k in rec):
            val.append(rec)
    return train, val


def stage_facts(run_dir: Path) -> dict[str, Any]:
    """One stage's facts: name, objective, kind, params, shape, steps, tokens, time, throughput, final losses."""
    from scratchlm.config import load_run_config
    from scratchlm.model.info import count_params, describe

    cfg = load_run_config(run_dir)
    train, val = train_and_val_metrics(run_dir)
    m = cfg.model
    kind = "adapter" if (Path(run_dir) / "adapter_config.json").exists() and not (Path(run_dir) / "model.safetensors").exists() else "model"
    facts: dict[str, Any] = {
        "name": Path(run_dir).name, "dir": str(run_dir), "objective": cfg.train.objective, "kind": kind,
        "params": count_params(m), "shape": f"{m.n_layers} layers × d_model {m.d_model}, {describe(m)}, "
                                           f"vocab {m.vocab_size}, context {m.max_seq_len}",
        "steps": train[-1]["step"] if train else 0, "tokens": int(train[-1].get("tokens", 0)) if train else 0,
        "seconds": float(train[-1].get("elapsed_s", 0.0)) if train else 0.0,
        "final_loss": train[-1]["loss"] if train else None,
        "val": {k: v for k, v in (val[-1] if val else {}).items() if k != "step"},
    }
    if kind == "adapter":
        facts["adapter"] = f"LoRA r={cfg.lora.rank} α={cfg.lora.alpha:g} on {cfg.lora.targets} over {Path(cfg.lora.base).name}"
    facts["tokens_per_s"] = facts["tokens"] / facts["seconds"] if facts["seconds"] else None
    eval_file = Path(run_dir) / "eval.json"
    facts["eval"] = json.loads(eval_file.read_text(encoding="utf-8")) if eval_file.is_file() else {}
    return facts


def headline(ev: dict[str, Any]) -> dict[str, float]:
    """The flat numbers of an `evaluate_run` result: {"mc acc", "mc acc_norm", "bpb", "ppl", "synth <task>"}."""
    out: dict[str, float] = {}
    if "mc" in ev:
        out["mc acc"], out["mc acc_norm"] = ev["mc"]["acc"], ev["mc"]["acc_norm"]
    if "ppl" in ev:
        out["bpb"], out["ppl"] = ev["ppl"]["bpb"], ev["ppl"]["ppl"]
    for task, v in ev.get("synth", {}).items():
        out[f"synth {task}"] = v["acc"]
    if "gen" in ev:
        out["gen rougeL"] = ev["gen"]["rougeL"]
    return out


def plot_losses(stages: list[dict], metrics: list[tuple[list[dict], list[dict]]], path: Path) -> Path:
    """One panel per stage: training loss and validation loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False)
    for ax, st, (train, val) in zip(axes[0], stages, metrics):
        if train:
            ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
        vl = [r for r in val if "val_loss" in r]
        if vl:
            ax.plot([r["step"] for r in vl], [r["val_loss"] for r in vl], "o-", label="val loss", ms=3)
        ax.set_title(f"{st['name']} ({st['objective']})")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if train or vl:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metric_bars(names: list[str], table: dict[str, dict[str, float]], path: Path) -> Path | None:
    """Grouped bars of every metric per stage: accuracies (0-1) in one panel, bits per byte in another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = [k for k in table if k in ACCURACY_KEYS or k.startswith("synth ")]
    bpb = [k for k in table if k == "bpb"]
    panels = [(p, keys) for p, keys in (("accuracy", acc), ("bits per byte (lower is better)", bpb)) if keys]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 + 1.2 * max(len(k) for _, k in panels), 3.6), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            vals = [table[k].get(name, float("nan")) for k in keys]
            ax.bar([j + i * width for j in range(len(keys))], vals, width, label=name)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(keys))])
        ax.set_xticklabels(keys, rotation=20, ha="right", fontsize=8)
        if "mc acc" in keys:  # the built-in set has four choices per question
            ax.axhline(0.25, color="gray", ls="--", lw=1, label="chance (4 choices)")
        ax.set_title(title)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    # markdown would read a reply's <think> as an HTML tag and hide it; a newline would end the row
    esc = lambda s: _fmt(s).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ⏎ ")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]]


def write_report(run_dirs: list[Path], out: Path, summary: dict | None = None, evaluate: bool = False,
                 val_data: Path | None = None) -> Path:
    """Write out/report.md (+ loss_curves.png, metrics.png) for the stages in `run_dirs`, in order; returns the
    report's path. `summary` is the demo's summary dict; `evaluate=True` scores every stage on the built-in
    multiple-choice set and bits per byte over `val_data` (default: the first stage's train.val_data)."""
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise ValueError("report: no run folders given")
    for r in run_dirs:
        if not (r / "config.toml").is_file():
            raise FileNotFoundError(f"{r}: not a run folder (no config.toml)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = [stage_facts(r) for r in run_dirs]
    if evaluate:
        _evaluate(stages, val_data)
    names = [s["name"] for s in stages]
    table: dict[str, dict[str, float]] = {}
    for st in stages:
        for k, v in headline(st["eval"]).items():
            table.setdefault(k, {})[st["name"]] = v
        for k, v in st["val"].items():
            table.setdefault(k, {})[st["name"]] = v
    plot_losses(stages, [train_and_val_metrics(r) for r in run_dirs], out / "loss_curves.png")
    has_bars = plot_metric_bars(names, table, out / "metrics.png") is not None

    first = stages[0]
    lines = [f"# Report card: {' → '.join(names)}", ""]
    lines += [f"**Model**: {first['params']:,} parameters; {first['shape']}.", ""]
    lines += ["## Stages", ""]
    lines += _md_table(["stage", "objective", "weights", "steps", "tokens seen", "time (s)", "tokens/s", "final train loss"],
                       [[s["name"], s["objective"], s.get("adapter", "full model"), s["steps"], s["tokens"],
                         round(s["seconds"], 1), round(s["tokens_per_s"]) if s["tokens_per_s"] else None, s["final_loss"]]
                        for s in stages])
    total_s = sum(s["seconds"] for s in stages)
    lines += ["", f"Training time over all stages: {total_s:.0f} s, {sum(s['tokens'] for s in stages):,} tokens.", ""]
    lines += ["![loss curves](loss_curves.png)", ""]
    if table:
        lines += ["## Metrics per stage", "",
                  "val_* are each stage's own validation numbers (its own data); mc and bpb, when present, are "
                  "measured the same way for every stage (built-in bilingual multiple choice, and bits per byte on one "
                  "validation set), so they compare across stages.", ""]
        lines += _md_table(["metric", *names], [[k, *[v.get(n) for n in names]] for k, v in table.items()])
        lines += [""] + (["![metrics](metrics.png)", ""] if has_bars else [])
    if any(st.get("replies") for st in stages):
        lines += ["## Sample answers per stage (greedy)", ""]
        lines += _md_table(["prompt", *names], [[p, *[(st.get("replies") or [""] * len(SAMPLE_PROMPTS))[i] for st in stages]]
                                                for i, p in enumerate(SAMPLE_PROMPTS)])
        lines.append("")
    if summary:
        lines += _summary_sections(summary)
    text = "\n".join(lines).rstrip() + "\n"
    path = out / "report.md"
    path.write_text(text, encoding="utf-8")
    return path


def _evaluate(stages: list[dict], val_data: Path | None) -> None:
    """Fill each stage's "eval" with built-in MC and (when a validation set is known) bpb on the same data."""
    from scratchlm.config import load_run_config
    from scratchlm.eval.evaluate import evaluate_run

    if val_data is None:
        vd = load_run_config(stages[0]["dir"]).train.val_data
        val_data = Path(vd) if vd and Path(vd).is_dir() else None
    for st in stages:
        if st["objective"] == "reward":
            continue
        tasks = ["mc"] + (["ppl"] if val_data else [])
        st["eval"] = {**st["eval"], **evaluate_run(st["dir"], tasks, data=val_data, max_windows=100)}
        st["replies"] = _sample_replies(st["dir"])


def _sample_replies(run_dir: str) -> list[str]:
    from scratchlm.engine.sampling import SamplingParams
    from scratchlm.eval.tasks import chat_replies
    from scratchlm.runs import load_run

    model, tok, _ = load_run(run_dir)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=48)  # the same replies each time the card is written
    return [r["reply"] for r in chat_replies(model, tok, list(SAMPLE_PROMPTS), greedy)]


def _summary_sections(summary: dict) -> list[str]:
    """The demo summary as markdown: its numbers (eval.summary's rows, the same the demo prints), the RAG answers,
    the graded samples and the chats."""
    from scratchlm.eval.summary import rag_lines, split_name, summary_rows, summary_title

    lines: list[str] = []
    rows = summary_rows(summary)
    if rows:
        lines += [f"## The demo's numbers ({summary_title(summary)})", ""]
        lines += _md_table(["metric", "value"], [list(r) for r in rows]) + [""]
    rag = rag_lines(summary)
    if rag:
        lines += ["## RAG", "", rag[0], "", "```", *rag[1:], "```", ""]
    if summary.get("samples"):
        lines += [f"## Sample answers ({split_name(summary)} prompts, greedy)", ""]
        lines += _md_table(["task", "prompt", "reply", "expected", "ok"],
                           [[s.get("task"), s.get("prompt"), s.get("reply"), s.get("answer"), s.get("ok")] for s in summary["samples"]])
        lines.append("")
    if summary.get("chats"):
        lines += ["## Chats", ""] + _md_table(["prompt", "reply"], [[c["prompt"], c["reply"]] for c in summary["chats"]]) + [""]
    return lines
