"""Tool-use SFT in the demo: the demo trained with calculator chats added to its SFT data (DemoSettings.tool_*),
then the agent with the calculator vs the same model alone on held-out 4-5 digit problems, and the demo's other
tasks against a baseline demo trained without them (its summary.json, same split).

Choose on val, then report test from the same trained folder (the demo reuses finished stages; the split only picks
the items scored):

    PYTHONPATH=src nice -n 10 python docs/experiments/tool_sft.py --out /work/runs/tools_val --split val \\
        --baseline /work/runs/val_base/summary.json
    PYTHONPATH=src nice -n 10 python docs/experiments/tool_sft.py --out /work/runs/tools_val --split test \\
        --baseline /work/runs/demo0/summary.json --results docs/results/tool_sft.json

Writes OUT/tool_sft_{split}.json (and --results FILE via scratchlm.results.write_results)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def train_seconds(run_dir: Path) -> float | None:
    """Wall-clock seconds a finished stage folder trained for (its last metrics line that has them)."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    times = [json.loads(x)["elapsed_s"] for x in lines if '"elapsed_s"' in x]
    return times[-1] if times else None


def main() -> None:
    """Run (or reuse) the demo with tool chats, score `--split`, compare with `--baseline`."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/work/runs/tools_val"))
    ap.add_argument("--split", choices=("val", "test"), default="val")
    ap.add_argument("--setting", action="append", default=None, metavar="KEY=VALUE",
                    help="DemoSettings overrides (default: tool_sizes=[2000,100,100])")
    ap.add_argument("--baseline", type=Path, default=None, help="summary.json of a demo without tool chats")
    ap.add_argument("--results", default="", metavar="FILE", help="also write a results file, e.g. "
                    "docs/results/tool_sft.json")
    args = ap.parse_args()

    from scratchlm.demo.pipeline import run_demo
    from scratchlm.demo.settings import DemoSettings, override_settings

    sets = args.setting or ["tool_sizes=[2000,100,100]"]
    s = override_settings(DemoSettings(), sets)
    s.eval_split = args.split
    summary = run_demo(args.out, settings=s, progress=False)
    numbers = {
        "settings": sets, "tool_use_accuracy": summary["tool_use_accuracy"], "accuracy": summary["accuracy"],
        "val_ppl_sft": summary["val_ppl_sft"],
        "seconds": {**summary["seconds"], **{f"train_{st}": train_seconds(args.out / st) for st in ("pretrain", "sft")}},
    }
    if args.baseline:
        base = json.loads(args.baseline.read_text(encoding="utf-8"))
        if base["settings"]["eval_split"] != args.split:
            raise SystemExit(f"{args.baseline} scores {base['settings']['eval_split']}, not {args.split}")
        numbers["baseline"] = {"summary": str(args.baseline), "accuracy": base["accuracy"],
                               "val_ppl_sft": base["val_ppl_sft"],
                               "train_seconds": {st: train_seconds(args.baseline.parent / st)
                                                 for st in ("pretrain", "sft")}}
        numbers["accuracy_change"] = {k: round(v - base["accuracy"][k], 4) for k, v in summary["accuracy"].items()
                                      if k in base["accuracy"]}
    (args.out / f"tool_sft_{args.split}.json").write_text(json.dumps(numbers, ensure_ascii=False, indent=1) + "\n",
                                                          encoding="utf-8")
    tu = numbers["tool_use_accuracy"]
    print(f"{args.split}: agent {tu['agent']} | alone {tu['direct']} | called {tu['called_calculator']}")
    print("accuracy change vs baseline:", numbers.get("accuracy_change"))
    if args.results:
        from scratchlm.results import write_results

        print("results file:", write_results(args.results, "tool_sft", numbers, seed=s.seed, split=args.split))


if __name__ == "__main__":
    main()
