"""A GRPO variant on a finished demo folder: python grpo_var.py SRC NAME SEED [COLD_FROM|-] [k=v ...].
Links SRC's tokenizer, data, sft (and COLD_FROM/grpo_cold) into SRC_g_NAME, runs demo.run_grpo_stage there."""
import json, sys, time
from dataclasses import replace
from pathlib import Path

from scratchlm.demo import DemoSettings, prepare_demo_data, run_grpo_stage

src, name, seed, cold = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
extra = sys.argv[5:]
out = src.parent / f"{src.name}_g_{name}"
out.mkdir(exist_ok=True)
links = {d: src / d for d in ("tokenizer", "data", "pretrain", "sft")}
if cold != "-":
    links["grpo_cold"] = Path(cold) / "grpo_cold"
for d, target in links.items():
    if not (out / d).exists():
        (out / d).symlink_to(target)
s = DemoSettings(seed=seed, stages=["pretrain", "sft", "grpo"])
s = replace(s, grpo_sets=[*s.grpo_sets, *extra])
paths = prepare_demo_data(out, s)
counts = json.loads((src / "sft_counts.json").read_text())
t = time.perf_counter()
res = run_grpo_stage(out, s, paths, {k: tuple(v) for k, v in counts.items()}, progress=False)
res["seconds"] = time.perf_counter() - t
res["extra"] = extra
(out / "grpo_result.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
