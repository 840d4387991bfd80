"""Results files and the README rendered from them: the reference tables equal what scripts/render_readme.py makes
of docs/results/, every results file names its command, seed, commit and machine, and a hand edit is caught."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from scratchlm.results import read_results, write_results

ROOT = Path(__file__).resolve().parents[1]


def _render_module():
    spec = importlib.util.spec_from_file_location("render_readme", ROOT / "scripts" / "render_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


render = _render_module()


def test_readme_tables_are_rendered_from_the_results_files():
    text = render.README.read_text(encoding="utf-8")
    # the README's numbers, in order
    assert render.blocks(text) == ["engine", "decode", "train", "post-training", "rollout", "rag", "tools", "agent-rl",
                                   "scaling", "quant", "demo"]
    assert render.render(text) == text, "README.md is out of date: run python scripts/render_readme.py"


README_FILES = ("demo_seed0", "demo_seed1", "demo_all_seed0", "demo_all_seed1", "bench_decode", "bench_engine",
                "bench_train", "bench_rollout", "bench_rl_memory", "rag_eval", "bench_rag", "inference_scaling",
                "bench_quant", "kv_int8", "tool_sft", "agent_rl_hard_seed0", "agent_rl_hard_seed1",
                "agent_rl_hard120_seed0", "agent_rl_hard120_seed1", "agent_vote_seed0", "agent_vote_seed1")


def test_every_results_file_records_where_its_numbers_come_from():
    files = sorted((ROOT / "docs" / "results").glob("*.json"))
    assert {f.stem for f in files} >= set(README_FILES)
    for f in files:
        doc = read_results(f)
        # a command of the repo: the CLI, a bench, a script, or the test that measures (the soak)
        assert any(w in doc["command"] for w in ("scratchlm ", "bench", "scripts/", "mutation", "pytest", "experiments/")), \
            (f, doc["command"])
        assert doc["commit"], f"{f}: no commit recorded"
        if f.stem in README_FILES:  # the README's tables: measured on committed code
            assert not doc["commit"].endswith("+dirty"), f"{f}: measured on uncommitted code"
        assert doc["machine"]["cores"] and doc["date"], f
    for name in ("demo_seed", "demo_all_seed"):
        for seed in (0, 1):
            doc = read_results(ROOT / "docs" / "results" / f"{name}{seed}.json")
            assert doc["seed"] == seed and doc["split"] == "test" and doc["numbers"]["settings"]["eval_split"] == "test"


def test_a_hand_edited_number_is_caught(tmp_path):
    text = render.README.read_text(encoding="utf-8")
    start = text.index("<!-- results:demo ")
    cell = text.index("| test accuracy: add2 |", start)
    edited = text[:cell] + text[cell:].replace("| test accuracy: add2 | ", "| test accuracy: add2 | 9", 1)
    assert render.render(edited) != edited and render.render(edited) == text
    readme = tmp_path / "README.md"
    readme.write_text(edited, encoding="utf-8")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_readme.py"), "--check", "--readme", str(readme)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "out of date" in out.stdout and "+| test accuracy: add2 |" in out.stdout


def test_a_changed_results_file_changes_the_readme(tmp_path):
    """The table follows the file: rewrite seed 1's add2 count and the rendered row says the new number."""
    results = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", results)
    doc = json.loads((results / "demo_seed1.json").read_text())
    doc["numbers"]["counts"]["add2"] = [123, 200]
    (results / "demo_seed1.json").write_text(json.dumps(doc))
    table = render.render_demo(results)
    row = next(line for line in table.splitlines() if line.startswith("| test accuracy: add2 |"))
    assert row.split(" | ")[2] == "0.615 (123/200)"


def test_results_file_round_trip_and_errors(tmp_path):
    path = write_results(tmp_path / "r" / "x.json", "x", {"a": [1, 2]}, seed=3, split="test", command="scratchlm x")
    doc = read_results(path)
    assert doc["numbers"] == {"a": [1, 2]} and doc["seed"] == 3 and doc["command"] == "scratchlm x"
    assert doc["machine"]["torch"] and doc["format"] == 1
    assert not list(tmp_path.glob("r/*.tmp"))  # written whole, then renamed
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 1,\n "name": }')
    with pytest.raises(ValueError, match=r"bad.json:2: not valid JSON"):
        read_results(bad)
    bad.write_text('{"format": 1, "name": "x"}')
    with pytest.raises(ValueError, match="missing command, commit, machine, numbers"):
        read_results(bad)
    bad.write_text(json.dumps({**doc, "format": 99}))
    with pytest.raises(ValueError, match="results format 99"):
        read_results(bad)
    with pytest.raises(ValueError, match="no renderer"):
        render.render("<!-- results:nope -->\nx\n<!-- /results -->\n", tmp_path)


@pytest.mark.parametrize("argv, expected", [
    (["/repo/bench/fixed_budget.py", "--budget", "120"], "bench/fixed_budget.py --budget 120"),
    (["/repo/scripts/mutation.py", "--write"], "scripts/mutation.py --write"),
    (["/venv/lib/scratchlm/__main__.py", "demo"], "scratchlm demo"),
    (["/repo/docs/experiments/grounded_sft.py", "--out", "x"], "docs/experiments/grounded_sft.py --out x"),
    (["/tmp/other.py"], "other.py"),
])
def test_command_line_names_the_repo_script_by_its_folder(monkeypatch, argv, expected):
    from scratchlm.results import command_line

    monkeypatch.setattr("sys.argv", argv)
    assert command_line() == expected
