"""The report card: report.md with every stage's facts and metrics side by side, the loss curves and metric
bars as PNGs, the demo summary's samples; bad input is an error naming the file."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.cli import main
from scratchlm.config import load_config
from scratchlm.eval.report import write_report
from scratchlm.model.transformer import Transformer
from scratchlm.runs import save_run
from scratchlm.tokenizer.bpe import train_tokenizer
from scratchlm.model.reward import RewardModel

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PNG = b"\x89PNG\r\n\x1a\n"


def make_stage(path, tok, objective, steps, seed):
    cfg = load_config("debug", [f"train.objective={objective}", "model.init_std=0.1"])
    torch.manual_seed(seed)
    model = Transformer(cfg.model)
    save_run(path, RewardModel(model) if objective == "reward" else model, cfg, tok)
    # what the training loop logs: train records every few steps, validation records at eval steps
    with open(path / "metrics.jsonl", "w") as f:
        for step in range(2, steps + 1, 2):
            f.write(json.dumps({"step": step, "loss": 6.0 - step / 10, "lr": 1e-3, "tokens": 256 * step,
                                "tokens_per_s": 1000.0, "elapsed_s": 0.5 * step}) + "\n")
        f.write(json.dumps({"step": steps, "val_loss": 5.0, "val_ppl": 148.4}) + "\n")


def test_report_card_of_two_stages(tmp_path, capsys):
    tok = train_tokenizer(tmp_path / "tok", vocab_size=512, show_progress=False)
    make_stage(tmp_path / "pretrain", tok, "pretrain", 10, 0)
    make_stage(tmp_path / "sft", tok, "sft", 6, 1)
    make_stage(tmp_path / "reward", tok, "reward", 4, 2)  # a judge, not a language model: facts, no mc or replies
    summary = {"counts": {"add2": [3, 4]}, "samples": [{"task": "add2", "prompt": "1+1?", "reply": "2|x", "answer": "2", "ok": True}],
               "chats": [{"prompt": "hi", "reply": "hello\nthere"}], "seconds": {"total": 12.5}}
    path = write_report([tmp_path / "pretrain", tmp_path / "sft", tmp_path / "reward"], tmp_path / "report", summary,
                        evaluate=True)
    text = path.read_text()
    assert text.startswith("# Report card: pretrain → sft → reward")
    assert "| reward | reward | full model | 4 |" in text
    assert "| pretrain | pretrain | full model | 10 | 2,560 | 5 | 512 | 5 |" in text  # steps, tokens, s, tokens/s, loss
    assert "| mc acc |" in text and "| val_ppl | 148.4 | 148.4 | 148.4 |" in text
    assert "## Sample answers per stage (greedy)" in text and "| What is your name? |" in text
    # the demo summary's numbers, rendered by eval.summary as the demo prints them
    assert "| val (dev) accuracy: add2 | 0.750 (3/4) |" in text and "| time: total | 12 s |" in text
    assert "2\\|x" in text and "hello ⏎ there" in text
    for png in ("loss_curves.png", "metrics.png"):
        assert (tmp_path / "report" / png).read_bytes().startswith(PNG) and f"({png})" in text
    # the command; a broken metrics line names file:line
    assert main(["report", str(tmp_path / "pretrain"), "--out", str(tmp_path / "r2")]) == 0
    assert (tmp_path / "r2" / "report.md").exists()
    assert not (tmp_path / "r2" / "metrics.png").exists()  # no accuracy or bpb to draw without --eval
    with open(tmp_path / "sft" / "metrics.jsonl", "a") as f:
        f.write("{oops\n")
    assert main(["report", str(tmp_path / "sft"), "--out", str(tmp_path / "r3")]) == 1
    assert "metrics.jsonl:5: invalid JSON" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r4")]) == 1


def test_summary_rows_are_the_one_rendering_of_the_demo_summary():
    from scratchlm.eval.summary import rag_lines, summary_rows, summary_title

    summary = {"params": 1234567, "counts": {"identity": [1, 2], "add2": [3, 4]}, "seconds": {"total": 90.0},
               "val_ppl_pretrain": 200.0, "val_ppl_sft": 220.0, "val_ppl_unigram": 400.0,
               "dpo": {"pairs": 16, "implicit_accuracy": 0.5, "logp_accuracy_before": 0.25, "logp_accuracy_after": 0.75,
                       "tasks": {"add2": [0.5, 1.0]}},
               "rag": {"embedder": "hash", "chunks": 7, "questions": [
                   {"question": "q?", "expected": "a", "sources": ["corpus.jsonl:1"], "right_doc_retrieved": True,
                    "answer": "a", "correct": True, "answer_without_rag": "b"}]}}
    rows = dict(summary_rows(summary))  # no settings: a summary from before the test split, on val
    assert list(rows)[:2] == ["val (dev) accuracy: add2", "val (dev) accuracy: identity"]  # sorted by task
    assert rows["val (dev) accuracy: add2"] == "0.750 (3/4)" and rows["ratio (pretrained / unigram)"] == "0.500"
    assert rows["ratio (after SFT / pretrained)"] == "1.10" and rows["DPO: val (dev) add2 before → after"] == "0.500 → 1.000"
    assert rows["DPO: val (dev) implicit-reward accuracy (16 pairs), SFT → DPO"] == "0 (by definition) → 0.500"
    test_rows = dict(summary_rows({**summary, "settings": {"eval_split": "test"}}))
    assert test_rows["test accuracy: add2"] == "0.750 (3/4)" and "DPO: test add2 before → after" in test_rows
    assert rows["time: total"] == "90 s" and summary_title(summary) == "scratchlm demo — 1,234,567 parameters, 1.5 min"
    assert summary_rows({}) == [] and rag_lines({}) == []
    assert rag_lines(summary)[0].startswith("RAG (hash + BM25 over 7 chunks") and "✓" in rag_lines(summary)[1]
