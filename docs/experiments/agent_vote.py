"""Self-consistency for the agent (agent/vote.py): on held-out problems, the greedy agent against N sampled agent runs
voting on the answer, and against one sampled run alone, at each temperature given. Choose the temperature on val,
then score test at that one temperature.

    PYTHONPATH=src python docs/experiments/agent_vote.py --model /work/runs/arlm0/agent --calc-tasks add6,sub6,mul6 \
        --split val --temperatures 0.5,0.7,1.0 --out /work/runs/vote0_val.json

Writes OUT (and docs/results/NAME.json with --results NAME)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a tool-use run (e.g. a demo's tools/ or after RL)")
    ap.add_argument("--calc-tasks", default="add6,sub6,mul6", help="the arithmetic tasks of the held-out problems")
    ap.add_argument("--split", default="val")
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="the problems' seed and the first run's sampling seed")
    ap.add_argument("--votes", type=int, default=8)
    ap.add_argument("--temperatures", default="0.7", help="comma-separated sampling temperatures")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--results", default="", metavar="NAME", help="also write docs/results/NAME.json")
    ap.add_argument("--notes", default="", help="the machine and load, for the results file")
    args = ap.parse_args()

    from scratchlm.agent.tool_data import held_out_problems, tool_use_accuracy
    from scratchlm.engine.offline import LLM

    problems = held_out_problems(args.n_eval, args.split, seed=args.seed, calc_tasks=args.calc_tasks.split(","))
    llm = LLM.from_run(args.model)
    out: dict = {"model": str(args.model), "calc_tasks": args.calc_tasks.split(","), "split": args.split,
                 "n": len(problems), "votes": args.votes, "by_temperature": {}}
    for t in (float(x) for x in args.temperatures.split(",")):
        t0 = time.perf_counter()
        r = tool_use_accuracy(llm, problems, tools=["calculator"], votes=args.votes, temperature=t, seed=args.seed)
        row = {k: r[k] for k in ("agent", "agent_sampled", "agent_vote", "direct", "called_calculator")}
        out["by_temperature"][str(t)] = {**row, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"T={t}: greedy {r['agent']['all']:.2f}, one sample {r['agent_sampled']['all']:.2f}, "
              f"vote of {args.votes} {r['agent_vote']['all']:.2f}", flush=True)
    args.out.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    if args.results:
        from scratchlm.results import write_results

        print(write_results(Path(__file__).resolve().parents[2] / "docs" / "results" / f"{args.results}.json",
                            args.results, out, seed=args.seed, split=args.split, notes=args.notes))


if __name__ == "__main__":
    main()
