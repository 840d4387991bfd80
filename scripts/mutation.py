"""Mutation testing (mutmut 3) of the modules where a silent bug costs most, each against only the test files that
cover it; prints killed / survived / timeout per module and the score killed / (killed + survived).

    nice -n 10 python scripts/mutation.py                 # every module (15 min on 2 quiet cores, 1 h busy)
    nice -n 10 python scripts/mutation.py sampling blocks # some of them
    python scripts/mutation.py --list                     # the modules, their functions and test files
    python scripts/mutation.py --results-only             # re-read the last run's results, run nothing
    python scripts/mutation.py --survivors sampling       # show the diff of each surviving mutant
    python scripts/mutation.py --results-only --write     # the table into docs/results/mutation.json

Each module runs in its own folder, mutants/<module>/ (git-ignored): a pyproject.toml (the project's, plus a
[tool.mutmut] table naming the files to mutate and the tests to run), links to src/ and tests/, and the mutants/
copy that mutmut makes and mutates there. mutmut records which of the selected tests call each function, so each
mutant runs only those (pytest -x); one worker at a time (`--max-children 1`), one torch thread.

"No tests" mutants (code that none of the module's tests reaches) count as survived; lines marked
`# pragma: no mutate` are equivalent mutants, excluded with the reason beside them, and counted from the source.
With --write, the scores go to docs/results/mutation.json (scratchlm.results.write_results); a module with no run
in mutants/ keeps its entry from that file. `--stage TEXT` records what a run measures ("after the new tests") in
mutants/<module>/run.json, and --write copies it beside the module's scores.

Not part of CI: it takes 15 minutes to an hour, with the load. See docs/testing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "mutants"
RESULTS = ROOT / "docs/results/mutation.json"
PYTEST_ARGS = ["-p", "no:cacheprovider", "-m", "not slow", "-x"]


@dataclass
class Target:
    """One module under mutation: the files mutmut mutates, the functions whose mutants count (mutmut's
    `module.x_func__mutmut_N` / `module.xǁClassǁmethod__mutmut_N` names, fnmatch patterns), the tests it runs."""

    name: str
    files: list[str]
    functions: list[str]
    tests: list[str]
    what: str = ""
    extra: list[str] = field(default_factory=list)


TARGETS = [
    Target("rl_losses", ["src/scratchlm/train/rl_losses.py"], ["scratchlm.train.rl_losses.*"],
           ["tests/test_rl_losses.py"], "GRPO advantages, k3 KL, clipped/CISPO policy loss and aggregations, "
           "PPO's KL-shaped rewards, GAE, whitening, value loss"),
    Target("preference", ["src/scratchlm/train/preference.py"], ["scratchlm.train.preference.*"],
           ["tests/test_preference.py"], "DPO / cDPO / IPO / SimPO (+RPO), TRL's reward metrics, the reward "
           "model's pairwise loss"),
    Target("sampling", ["src/scratchlm/engine/sampling.py"], ["scratchlm.engine.sampling.*"],
           ["tests/test_sampling.py", "tests/test_generate.py", "tests/test_engine.py",
            *(f"tests/test_sampling_penalties.py::{t}" for t in (  # not its CLI and server tests
                "test_min_p_keeps_exactly_the_tokens_at_or_above_the_threshold",
                "test_frequency_and_presence_penalties_by_hand", "test_out_of_range_params_name_the_field",
                "test_engine_penalises_generated_tokens_only", "test_engine_batched_rows_equal_rows_alone"))],
           "SamplingParams checks, repetition / frequency / presence penalties, temperature, top-k, top-p, min-p, "
           "the draw, seeded generators, batched sample_rows"),
    Target("blocks", ["src/scratchlm/engine/blocks.py", "src/scratchlm/engine/kv_manager.py"],
           ["scratchlm.engine.blocks.*", "scratchlm.engine.kv_manager.*"],
           ["tests/test_blocks.py", "tests/test_engine.py"],
           "the reference-counted block pool, LRU eviction, the chained prefix hash, block tables (prefix match, "
           "admission, fork, registration, free)"),
    Target("lora_merge", ["src/scratchlm/model/lora.py", "src/scratchlm/train/lora_merge.py"],
           ["scratchlm.model.lora.xǁLoRALinearǁ*", "scratchlm.model.lora.x_merge_lora__mutmut_*",
            "scratchlm.train.lora_merge.*"], ["tests/test_lora.py"],
           "LoRALinear (scaling, delta, forward, delta_weight, effective_weight, merge, unmerge), merge_lora, "
           "merge_run (`scratchlm lora merge`)"),
    Target("packing", ["src/scratchlm/train/batches.py", "src/scratchlm/model/masks.py"],
           [*(f"scratchlm.train.batches.{f}__mutmut_*" for f in ("x_epoch_order", "x_row_xy", "x_rows_batch",
                                                                  "x_first_fit_rows", "x_mix_slot")),
            "scratchlm.train.batches.xǁPackedWindowsǁ*", "scratchlm.train.batches.xǁPackedDocsǁ*",
            "scratchlm.model.masks.*"],
           ["tests/test_train_batches.py", "tests/test_attention.py", "tests/test_train_loop.py"],
           "epoch order, fixed windows, first-fit packing of whole conversations, the SFT mask and document "
           "boundaries in the targets, padded batches, the pretrain mix; causal / window / padding / "
           "packed-document attention masks"),
    Target("chat_template", ["src/scratchlm/tokenizer/bpe.py"],
           ["scratchlm.tokenizer.bpe.x_validate_messages__mutmut_*",
            "scratchlm.tokenizer.bpe.xǁTokenizerǁrender_chat__mutmut_*",
            "scratchlm.tokenizer.bpe.xǁTokenizerǁencode_chat__mutmut_*"],
           ["tests/test_chat_template.py"], "message validation, render_chat (ChatML text), encode_chat (ids "
           "and the assistant-only loss mask); test_tokenizer.py's transformers parity and property tests are "
           "left out: they retrain a bigger tokenizer and run hundreds of examples for every mutant"),
]
BY_NAME = {t.name: t for t in TARGETS}

# mutmut's exit codes → what they mean for the score (mutmut.stats.status_by_exit_code)
KILLED = {1, 3}
SURVIVED = {0, 5, 33}  # 5 / 33: no test ran the mutant (a survivor: nothing would catch it)
TIMEOUT = {36, -24, 24, 152, 255}


def _toml_list(xs: list[str]) -> str:
    return "[" + ", ".join(json.dumps(x) for x in xs) + "]"


def prepare(t: Target, stage: str = "") -> Path:
    """mutants/<name>/ with the project's pyproject.toml plus this module's [tool.mutmut], and links to src/ tests/.
    A fresh folder each run: mutmut's caches would otherwise keep results from before the tests changed."""
    d = WORK / t.name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for link in ("src", "tests"):
        (d / link).symlink_to(ROOT / link)
    conf = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    conf += ("\n[tool.mutmut]\nsource_paths = [\"src\"]\n"
             f"only_mutate = {_toml_list(t.files)}\n"
             f"pytest_add_cli_args_test_selection = {_toml_list(t.tests + t.extra)}\n"
             f"pytest_add_cli_args = {_toml_list(PYTEST_ARGS)}\n"
             "use_git_change_detection = false\n")
    (d / "pyproject.toml").write_text(conf, encoding="utf-8")
    from datetime import datetime, timezone

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    (d / "run.json").write_text(json.dumps({
        "commit": commit.stdout.strip() + ("+dirty" if dirty else ""),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "stage": stage}), encoding="utf-8")
    return d


def run_module(t: Target, log: Path, stage: str = "") -> int:
    """Run mutmut over one module's functions; its output goes to `log`. Returns mutmut's exit status."""
    d = prepare(t, stage)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts mutants/src first itself
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", "1", *t.functions]
    with open(log, "w", encoding="utf-8") as out:
        return subprocess.run(cmd, cwd=d, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


def results(t: Target) -> dict[str, int] | None:
    """killed / survived / timeout / other counts of the last run, or None when it has not run."""
    d = WORK / t.name / "mutants"
    codes: dict[str, int | None] = {}
    for f in t.files:
        meta = d / (f + ".meta")
        if not meta.exists():
            return None
        codes.update(json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"])
    codes = {k: v for k, v in codes.items() if any(fnmatch(k, p) for p in t.functions)}
    n = {"killed": 0, "survived": 0, "timeout": 0, "other": 0}
    for v in codes.values():
        n["killed" if v in KILLED else "survived" if v in SURVIVED else "timeout" if v in TIMEOUT else "other"] += 1
    n["excluded"] = excluded(t)
    n["total"] = n["killed"] + n["survived"] + n["timeout"] + n["other"]
    run = WORK / t.name / "run.json"  # the commit whose code and tests the run used
    n.update(json.loads(run.read_text(encoding="utf-8")) if run.exists() else {"commit": None, "started": None})
    n.setdefault("stage", "")
    if n["stage"].startswith("first run"):  # those runs predate the pragmas: nothing was excluded from them
        n["excluded"] = 0
    return n


def survivors(t: Target) -> list[str]:
    """Names of the surviving mutants of the last run."""
    out = []
    for f in t.files:
        meta = WORK / t.name / "mutants" / (f + ".meta")
        if meta.exists():
            codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
            out += [k for k, v in codes.items() if v in SURVIVED and any(fnmatch(k, p) for p in t.functions)]
    return sorted(out)


_PRAGMA = re.compile(r"[ \t]*#\s*pragma:\s*no mutate.*$", re.M)


def excluded(t: Target) -> int:
    """Mutants that `# pragma: no mutate` lines remove from the module's functions: mutmut's own mutant generator
    run on each file with and without its pragmas (a pragma excludes every mutant of its line)."""
    from mutmut.mutation.file_mutation import mutate_file_contents

    n = 0
    old = os.getcwd()
    os.chdir(ROOT)  # mutmut reads its settings from ./pyproject.toml
    try:
        for f in t.files:
            src = (ROOT / f).read_text(encoding="utf-8")
            module = f.removeprefix("src/").removesuffix(".py").replace("/", ".")
            names = [{m for m in mutate_file_contents(f, text, None, None).mutant_names
                      if any(fnmatch(f"{module}.{m}", p) for p in t.functions)}
                     for text in (src, _PRAGMA.sub("", src))]
            n += len(names[1]) - len(names[0])
    finally:
        os.chdir(old)
    return n


def score(n: dict[str, int]) -> float:
    """killed / (killed + survived)."""
    return n["killed"] / max(n["killed"] + n["survived"], 1)


def table(names: list[str], markdown: bool = False) -> dict[str, dict[str, float]]:
    """Print the per-module table (plain or markdown); returns {module: numbers} for the modules with results."""
    rows = {}
    cols = ("killed", "survived", "timeout", "other", "excluded", "total")
    if markdown:
        print("| module | " + " | ".join(cols) + " | score |\n|---|" + "---:|" * (len(cols) + 1))
    else:
        print(f"{'module':<14}" + "".join(f" {c:>8}" for c in cols) + f" {'score':>7}")
    for name in names:
        n = results(BY_NAME[name])
        if n is None:
            print(f"{name:<14} (not run)")
            continue
        s = score(n)
        if markdown:
            print(f"| {name} | " + " | ".join(str(n[c]) for c in cols) + f" | {s:.1%} |")
        else:
            print(f"{name:<14}" + "".join(f" {n[c]:>8}" for c in cols) + f" {s:>7.1%}")
        rows[name] = {**n, "score": round(s, 4)}
    return rows


def main() -> int:
    """Run the chosen modules (all by default) and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", help=f"some of: {', '.join(BY_NAME)} (default: all)")
    ap.add_argument("--list", action="store_true", help="print the modules, their functions and tests, and stop")
    ap.add_argument("--results-only", action="store_true", help="print the last run's table, run nothing")
    ap.add_argument("--survivors", action="store_true", help="print each survivor's diff (mutmut show)")
    ap.add_argument("--write", action="store_true", help="write docs/results/mutation.json")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown (for docs/testing.md)")
    ap.add_argument("--stage", default="", help="what this run measures, kept with its results (e.g. 'after the "
                                                 "new tests'); --write copies it into the results file")
    args = ap.parse_args()
    names = args.modules or list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    if args.list:
        for t in (BY_NAME[n] for n in names):
            print(f"{t.name}: {t.what}\n  files: {' '.join(t.files)}\n  functions: {' '.join(t.functions)}\n"
                  f"  tests: {' '.join(t.tests + t.extra)}")
        return 0
    if not (args.results_only or args.survivors):
        WORK.mkdir(exist_ok=True)
        for name in names:
            log = WORK / f"{name}.log"
            print(f"== {name}: mutmut run (log: {log.relative_to(ROOT)})", flush=True)
            rc = run_module(BY_NAME[name], log, args.stage)
            if rc != 0:
                print(f"   mutmut exited {rc}; the end of its log:\n" + "".join(log.read_text().splitlines(True)[-20:]))
    if args.survivors:
        for name in names:
            for m in survivors(BY_NAME[name]):
                diff = subprocess.run([sys.executable, "-m", "mutmut", "show", m], cwd=WORK / name,
                                      capture_output=True, text=True).stdout
                print(diff)
        return 0
    rows = table(names, args.markdown)
    if args.write and rows:
        sys.path.insert(0, str(ROOT / "src"))
        from scratchlm.results import read_results, write_results

        if RESULTS.exists():  # a module not run here keeps the numbers (and commit, stage) of its last written run
            kept = {k: v for k, v in read_results(RESULTS)["numbers"].items() if k in BY_NAME and k not in rows}
            if kept:
                print(f"kept from {RESULTS.relative_to(ROOT)} (no run here): {', '.join(kept)}")
            rows = {n: rows[n] if n in rows else kept[n] for n in BY_NAME if n in rows or n in kept}

        out = write_results(RESULTS, "mutation", rows,
                            notes="mutmut 3 per module with only its test files; score = killed / (killed + "
                                  "survived); 'no tests' mutants count as survived; 'excluded' counts the mutants "
                                  "that '# pragma: no mutate' lines remove (equivalent mutants, reasons in the "
                                  "source); 'stage' says whether a module's run came before or after the new tests")
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
