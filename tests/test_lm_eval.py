"""lm-evaluation-harness runs our transformers export on the task yaml we ship, and its numbers are ours:
the same accuracy, and every choice's log-likelihood equal to `scratchlm eval`'s within float error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from scratchlm.config import load_config  # noqa: E402
from scratchlm.eval.lm_eval_tasks import TASK_DIR  # noqa: E402
from scratchlm.eval.multiple_choice import builtin_items, score_mc  # noqa: E402
from scratchlm.export.hf import export_hf  # noqa: E402
from scratchlm.model.transformer import Transformer  # noqa: E402
from scratchlm.runs import load_run, save_run  # noqa: E402
from scratchlm.tokenizer.bpe import train_tokenizer  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow, pytest.mark.ci]  # ~20 s, mostly lm_eval's start

PER_KIND = 5


def test_lm_eval_on_the_export_equals_our_eval(tmp_path):
    tok = train_tokenizer(tmp_path / "tok", vocab_size=512, show_progress=False)
    cfg = load_config("debug", ["model.init_std=0.1"])
    torch.manual_seed(0)
    save_run(tmp_path / "run", Transformer(cfg.model), cfg, tok)
    export = export_hf(tmp_path / "run", tmp_path / "hf")
    lm_eval = Path(sys.executable).with_name("lm_eval")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([str(lm_eval), "--model", "hf", "--model_args", f"pretrained={export},dtype=float32",
                        "--tasks", "scratchlm_mc", "--include_path", str(TASK_DIR), "--device", "cpu",
                        "--batch_size", "8", "--metadata", json.dumps({"per_kind": PER_KIND}),
                        "--output_path", str(tmp_path / "out"), "--log_samples"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"]["scratchlm_mc"]
    (samples_file,) = (tmp_path / "out").rglob("samples_scratchlm_mc_*.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])

    model, tokenizer, _ = load_run(tmp_path / "run")
    items = builtin_items(per_kind=PER_KIND)
    ours = score_mc(model, tokenizer, items)
    assert len(samples) == len(items) == ours["n"] == 3 * PER_KIND
    for s, it, lls in zip(samples, items, ours["loglikelihoods"]):
        assert s["doc"]["question"] == it.question and s["doc"]["choices"] == it.choices
        assert [float(ll) for ll, _ in s["filtered_resps"]] == pytest.approx(lls, abs=1e-3)
    assert theirs["acc,none"] == pytest.approx(ours["acc"])
    assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"])
