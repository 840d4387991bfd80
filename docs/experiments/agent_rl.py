"""Does agentic RL (`scratchlm train agent`) help the tool-use SFT model? A short GRPO run over multi-turn calculator
rollouts from a demo's SFT model (trained with tool chats: `scratchlm demo --setting tool_sizes=[...]`), then the
agent's final-answer accuracy on held-out 4-5 digit problems (agent/tool_data.py's `tool_use_accuracy`, greedy,
the calculator listed as in training), before and after.

    PYTHONPATH=src nice -n 10 python docs/experiments/agent_rl.py --demo /work/runs/tools_val --out /tmp/agent-rl \
        --results agent_rl

The RL prompts are the demo's own tool-use training prompts (data/tools/prompt_train.jsonl), the calculator ones only;
the problems scored are held_out_problems(n, split) (operand pairs never in training). Writes OUT/results.json (and
docs/results/NAME.json with --results NAME)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SETS = ["train.batch_size=8", "train.schedule=constant", "train.warmup_steps=2", "train.log_every=1",
        "train.eval_every=0", "train.save_every=0", "rl.num_generations=4", "rl.max_new_tokens=48", "rl.max_turns=3",
        "rl.tools=calculator", "rl.loss_agg=cispo", "rl.reward_funcs=answer,digits,format",
        "rl.reward_weights=1.0,0.5,0.1", "rl.temperature=1.0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("/work/runs/tools_val"), help="a demo folder with tool chats")
    ap.add_argument("--model", type=Path, default=None,
                    help="the tool-use model to start from (default: the demo's sft/; the tools step's: DEMO/tools)")
    ap.add_argument("--prompts", type=Path, default=None, help="its tool-use prompt file (default: "
                    "DEMO/data/tools/prompt_train.jsonl; the tools step's: DEMO/data/tools_stage/prompt_train.jsonl)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/agent-rl"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--split", default="val")
    ap.add_argument("--also-split", default="", help="score before/after on this split too (e.g. test: the split to "
                    "report once the settings were chosen on --split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calc-tasks", default="", help="score on held-out problems of these arithmetic tasks (e.g. "
                    "add6,sub6,mul6: a set the tools step has not saturated) and, unless --prompts is given, run RL "
                    "on --rl-prompts freshly written training prompts of the same tasks")
    ap.add_argument("--rl-prompts", type=int, default=4000, help="how many prompts --calc-tasks writes")
    ap.add_argument("--rl-calc-tasks", default="", help="write the RL prompts of these tasks instead (e.g. the 4-5 "
                    "digit ones beside the 6-digit ones, so that RL keeps what the tools step learnt)")
    ap.add_argument("--set", action="append", default=[], help="more config overrides for the RL run")
    ap.add_argument("--skip-before", action="store_true", help="score only the trained model")
    ap.add_argument("--results", default="", metavar="NAME", help="also write docs/results/NAME.json")
    ap.add_argument("--notes", default="2-core AMD EPYC shared with the lead's runs; one process, nice 10",
                    help="the machine and load, for the results file")
    args = ap.parse_args()

    import torch

    from scratchlm.agent.tool_data import CALC_TASKS, build_tool_sft, held_out_problems, tool_use_accuracy
    from scratchlm.engine.offline import LLM
    from scratchlm.runs import read_metrics
    from scratchlm.shards.prepare import prepare
    from scratchlm.train.stage import train_stage

    torch.manual_seed(args.seed)
    sft = args.model or args.demo / "sft"
    args.out.mkdir(parents=True, exist_ok=True)
    calc_tasks = tuple(t for t in args.calc_tasks.split(",") if t) or CALC_TASKS
    prompts = args.prompts or args.demo / "data" / "tools" / "prompt_train.jsonl"
    rl_tasks = tuple(t for t in args.rl_calc_tasks.split(",") if t) or calc_tasks
    if args.calc_tasks and not args.prompts:
        # the training side of the tasks' operand-pair split: no held-out problem's pair is among them
        prompts = build_tool_sft(args.out / "rl_data", sizes=(args.rl_prompts, 0, 0), direct_share=0.0, seed=args.seed,
                                 tools=("calculator",), calc_tasks=rl_tasks)["prompt_train"]
    rows = [json.loads(x) for x in prompts.read_text("utf-8").splitlines()]
    calc = [r for r in rows if r.get("tool") == "calculator"]
    src = args.out / "prompts.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in calc), encoding="utf-8")
    prepare("prompt", sft, [src], args.out / "prompts")
    problems = held_out_problems(args.n_eval, args.split, seed=args.seed, calc_tasks=calc_tasks)
    out: dict = {"demo": str(args.demo), "model": str(sft), "steps": args.steps, "lr": args.lr, "sets": SETS + args.set,
                 "rl_prompts": len(calc), "prompts": str(prompts), "calc_tasks": list(calc_tasks),
                 "rl_calc_tasks": list(rl_tasks), "split": args.split}
    t0 = time.perf_counter()
    if not args.skip_before:
        out["before"] = tool_use_accuracy(LLM.from_run(sft), problems, tools=["calculator"])
        print("before:", out["before"]["agent"], flush=True)
    out["seconds_eval_before"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    run = args.out / "agent"
    res = train_stage("agent", run, None, [*SETS, f"train.max_steps={args.steps}", f"train.lr={args.lr}",
                                           f"train.seed={args.seed}", *args.set],
                      data=str(args.out / "prompts"), init_from=sft, progress=False)
    out["seconds_rl"] = round(time.perf_counter() - t0, 1)
    logged = [r for r in read_metrics(run) if "reward" in r]
    keys = ("reward", "accuracy", "rewards/digits/mean", "rewards/format/mean", "tool_calls", "bad_calls", "turns")
    out["rl_curve"] = [{k: round(float(r[k]), 4) for k in ("step", *keys) if k in r} for r in logged]
    out["rl_status"] = res.status
    out["after"] = tool_use_accuracy(LLM.from_run(run), problems, tools=["calculator"])
    print("after:", out["after"]["agent"], flush=True)
    def before_after(problems: list[dict]) -> dict:
        return {label: tool_use_accuracy(llm, problems, tools=["calculator"])
                for label, llm in (("before", LLM.from_run(sft)), ("after", LLM.from_run(run)))}

    if args.also_split:
        other = held_out_problems(args.n_eval, args.also_split, seed=args.seed, calc_tasks=calc_tasks)
        out[args.also_split] = before_after(other)
        print(f"{args.also_split}:", {k: v["agent"] for k, v in out[args.also_split].items()}, flush=True)
    if calc_tasks != CALC_TASKS:  # what the tools step learnt (4-5 digits): does RL on other problems keep it?
        out["keep"] = {}
        for side in filter(None, (args.split, args.also_split)):
            out["keep"][side] = before_after(held_out_problems(args.n_eval, side, seed=args.seed))
            print(f"keep ({', '.join(CALC_TASKS)}) {side}:", {k: v["agent"] for k, v in out["keep"][side].items()},
                  flush=True)
    (args.out / "results.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    if args.results:
        from scratchlm.results import write_results

        print(write_results(Path(__file__).resolve().parents[2] / "docs" / "results" / f"{args.results}.json",
                            args.results, out, seed=args.seed, split=args.split,
                            notes=args.notes))


if __name__ == "__main__":
    main()
