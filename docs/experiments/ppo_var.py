"""A PPO variant on a finished demo folder: python ppo_var.py SRC NAME SEED [--set k=v ...].
Links SRC's tokenizer, data, sft and reward into SRC_NAME, runs demo.run_ppo_stage there, prints and saves the result."""
import json, sys, time
from dataclasses import replace
from pathlib import Path

from scratchlm.demo import DemoSettings, prepare_demo_data, prepare_preference_data, run_ppo_stage

src, name, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
extra = [a for a in sys.argv[4:]]
out = src.parent / f"{src.name}_{name}"
out.mkdir(exist_ok=True)
for d in ("tokenizer", "data", "pretrain", "sft", "reward"):
    if not (out / d).exists():
        (out / d).symlink_to(src / d)
s = DemoSettings(seed=seed, stages=["pretrain", "sft", "reward", "ppo"])
s = replace(s, ppo_sets=[*s.ppo_sets, *extra])
paths = prepare_preference_data(out, s, prepare_demo_data(out, s))
cache = src / "sft_counts.json"
if not cache.exists():
    from scratchlm.demo import evaluate_tasks
    from scratchlm.run import load_run
    sft, tok, _ = load_run(src / "sft")
    scores, _ = evaluate_tasks(sft, tok, paths["prompt_val"], s.eval_per_task, s.max_new_tokens)
    cache.write_text(json.dumps({k: list(v) for k, v in scores.items()}))
counts = json.loads(cache.read_text())
t = time.perf_counter()
res = run_ppo_stage(out, s, paths, {k: tuple(v) for k, v in counts.items()}, progress=False)
res["seconds"] = time.perf_counter() - t
res["extra"] = extra
(out / "ppo_result.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
