"""`scratchlm demo --quick`: the whole pipeline end to end, through the CLI."""

import json

import pytest

from scratchlm.cli import main


@pytest.mark.slow
@pytest.mark.ci
def test_demo_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"add2", "next_line", "author", "identity"}
    assert all(0.0 <= a <= 1.0 for a in summary["accuracy"].values())
    # even a 30-step model must beat the unigram model on held-out text
    assert summary["val_ppl_pretrain"] < summary["val_ppl_unigram"]
    for stage in ("pretrain", "sft"):
        for name in ("model.safetensors", "config.toml", "tokenizer.json", "metrics.jsonl", "loss.png"):
            assert (out / stage / name).exists(), f"{stage}/{name}"
