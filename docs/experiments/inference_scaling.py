"""Inference-time scaling on the demo's models: self-consistency (N samples, majority vote) and best-of-N (the
demo's reward model picks) against one greedy answer, on unsaturated held-out synth tasks.

Two (model, task) settings, each a held-out task its model answers right about as often as not:
- the SFT model on 2-digit addition in unseen phrasings and on the author of a poem (DEMO/data/synth);
- the GRPO stage's cold-start model (SFT on 3-digit addition, before any RL) on 3-digit addition
  (DEMO/data/grpo_synth, the GRPO stage's held-out prompts).
The sampling temperature of each method is chosen on the val split (the dev split, mean over the setting's tasks),
then both methods are run once on the test split at their chosen temperature and reported there.

    PYTHONPATH=src nice -n 10 python docs/experiments/inference_scaling.py --demo /work/runs/demo0

Reads DEMO/sft, DEMO/grpo_cold, DEMO/reward and the prompt files (nothing is written there); writes
docs/results/inference_scaling.json (scratchlm.results.write_results, split="test")."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("/work/runs/demo0"), help="a finished demo folder")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--settings", default="sft,grpo_cold", help="which of SETTINGS to run, comma-separated")
    ap.add_argument("--temperatures", default="0.3,0.5,0.7,1.0", help="tried on the val split")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (sample i of a prompt is seeded seed + i)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "inference_scaling.json")
    args = ap.parse_args()

    import torch

    from scratchlm.engine.scaling import load_reward_run
    from scratchlm.results import write_results
    from scratchlm.runs import load_run

    torch.set_num_threads(1)  # one process, one core: the machine is shared
    t0 = time.time()
    reward = load_reward_run(args.demo / "reward")
    numbers: dict = {"n": args.n, "settings": {}}
    for name in args.settings.split(","):
        run_name, data, tasks = SETTINGS[name]
        model, tok, _ = load_run(args.demo / run_name)
        numbers["settings"][name] = setting(args, model, tok, reward, args.demo / "data" / data, tasks)
        numbers["settings"][name]["run"] = str(args.demo / run_name)
    numbers["seconds"] = round(time.time() - t0, 1)
    notes = (f"demo seed-0 run {args.demo} (models: {args.settings}; the reward model RUN/reward); temperature per "
             f"method chosen on the val split (tried {args.temperatures}), reported on the test split; greedy = "
             f"temperature 0; top_p 1; sample i of a prompt seeded {args.seed} + i")
    path = write_results(args.out, "inference_scaling", numbers, seed=args.seed, split="test", notes=notes)
    for name, r in numbers["settings"].items():
        print(name, json.dumps(r["tasks"], indent=1), "chosen on val:", r["chosen_temperature"])
    print(f"wrote {path} in {numbers['seconds']} s")


# name → (run folder under the demo, prompt folder under DEMO/data, score keys)
SETTINGS = {"sft": ("sft", "synth", ["add2 (unseen phrasings)", "author"]),
            "grpo_cold": ("grpo_cold", "grpo_synth", ["add3", "add3 (unseen phrasings)"])}


def setting(args: argparse.Namespace, model, tok, reward, synth: Path, tasks: list[str]) -> dict:
    """Temperatures tried on val, each method run on test at its best one: the numbers of one (model, tasks)."""
    from scratchlm.eval.scaling import addition_trace_verifier, evaluate_scaling

    def run(split: str, temperature: float) -> dict:
        r = evaluate_scaling(model, tok, synth / f"prompt_{split}.jsonl", args.n, tasks=set(tasks),
                             temperature=temperature, seed=args.seed, reward=reward, verifier=addition_trace_verifier,
                             max_new_tokens=args.max_new_tokens)
        for k in tasks:
            if not k.startswith("add"):  # the verifier checks addition traces: elsewhere it says nothing
                r[k].pop("best_of_verifier")
        return r

    val: dict[str, dict] = {}
    for t in [float(x) for x in args.temperatures.split(",")]:
        r = run("val", t)
        r.pop("samples")
        val[str(t)] = r
        print(f"{synth.name} val T={t}: " + "  ".join(f"{k}: greedy {v['greedy']:.3f} sc {v['self_consistency']:.3f} "
                                         f"bo {v['best_of']:.3f} bv {v.get('best_of_verifier', float('nan')):.3f}"
                                         for k, v in r.items()), flush=True)

    def mean(r: dict, method: str) -> float:
        vals = [r[k][method] for k in tasks if method in r[k]]
        return sum(vals) / len(vals)

    # the highest mean val accuracy over the tasks; a tie goes to the lower temperature (listed first when sorted)
    temps = sorted(val, key=float)
    chosen = {m: max(temps, key=lambda t: (mean(val[t], m), -float(t)))
              for m in ("self_consistency", "best_of", "best_of_verifier")}
    by_t = {t: run("test", float(t)) for t in sorted(set(chosen.values()), key=float)}  # each temperature once
    test = {m: by_t[t] for m, t in chosen.items()}
    numbers: dict = {"tasks": {}, "chosen_temperature": {m: float(t) for m, t in chosen.items()},
                     "val": val, "samples": test["self_consistency"]["samples"][:4]}
    names = {"self_consistency": "self_consistency", "best_of": "best_of_reward", "best_of_verifier": "best_of_verifier"}
    for k in tasks:
        row = numbers["tasks"][k] = {"n_items": test["self_consistency"][k]["n_items"],
                                     "greedy": test["self_consistency"][k]["greedy"]}
        for m, name in names.items():
            if m in test[m][k]:  # at the method's own temperature: its pick, one sample's mean, the ceiling pass@N
                row[f"{name}@{args.n}"] = test[m][k][m]
                row[f"one_sample_at_{name}_temperature"] = test[m][k]["mean_sample"]
                row[f"pass@{args.n}_at_{name}_temperature"] = test[m][k]["pass_at_n"]
    return numbers


if __name__ == "__main__":
    main()
