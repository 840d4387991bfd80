"""Distillation: the KD loss against its closed form (forward and reverse KL, T²), a student trained towards a
teacher gets closer to it than plain SFT does, and the errors (no teacher, another tokenizer, another vocab)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scratchlm.config import ConfigError, load_config
from scratchlm.runs import build_model, save_run
from scratchlm.train.distill import Distill, kd_loss
from scratchlm.train.loop import train
from scratchlm.train.objectives import SFT
from tests.test_train_loop import _sft_shards, tok  # noqa: F401  (tok is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kd_loss_closed_form_forward_and_reverse():
    s, t = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[2.0, 0.0, 0.0]])
    T = 2.0

    def soft(z):
        e = [math.exp(v / T) for v in z]
        return [v / sum(e) for v in e]

    ps, pt = soft([0.0, 1.0, 2.0]), soft([2.0, 0.0, 0.0])
    fwd = sum(b * math.log(b / a) for a, b in zip(ps, pt)) * T**2
    rev = sum(a * math.log(a / b) for a, b in zip(ps, pt)) * T**2
    assert kd_loss(s, t, T, "forward").item() == pytest.approx(fwd, rel=1e-5)
    assert kd_loss(s, t, T, "reverse").item() == pytest.approx(rev, rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="kind='js'"):
        kd_loss(s, t, T, "js")


def _sets(tokenizer, *extra):
    return ["train.batch_size=2", "train.seq_len=48", "train.log_every=1", "train.eval_every=0", "train.save_every=0",
            "train.warmup_steps=1", "train.max_steps=15", "train.lr=3e-3", "train.packing=false",
            f"model.vocab_size={tokenizer.vocab_size}", *extra]


@torch.no_grad()
def _kl_to(student, teacher, shards, cfg) -> float:
    obj = SFT(cfg, shards)
    b = obj.next_batches()[0]
    from scratchlm.train.objectives import _forward

    return kd_loss(_forward(student, b).logits, _forward(teacher, b).logits, 1.0).item()


def test_distillation_pulls_the_student_towards_the_teacher(tok, tmp_path):  # noqa: F811
    shards, _ = _sft_shards(tok)
    torch.manual_seed(1)
    tcfg = load_config("debug", _sets(tok, "train.objective=sft", "model.init_std=0.2"))
    teacher = build_model(tcfg).eval()  # a different, confidently wrong model: its distribution is the target
    results = {}
    for name, extra in (("kd", ["distill.alpha=1.0", "distill.temperature=1.0"]), ("sft", [])):
        cfg = load_config("debug", _sets(tok, f"train.objective={'distill' if name == 'kd' else 'sft'}", *extra))
        torch.manual_seed(0)
        obj = Distill(cfg, shards, teacher=teacher) if name == "kd" else SFT(cfg, shards)
        res = train(cfg, obj, tmp_path / name, build_model(cfg), progress=False)
        assert all(np.isfinite(res.losses))
        from scratchlm.runs import load_run

        results[name] = _kl_to(load_run(tmp_path / name)[0], teacher, shards, cfg)
    assert results["kd"] < 0.5 * results["sft"]


def test_distill_errors(tok, tmp_path):  # noqa: F811
    shards, _ = _sft_shards(tok)
    cfg = load_config("debug", _sets(tok, "train.objective=distill"))
    with pytest.raises(ConfigError, match="distill needs a teacher"):
        Distill(cfg, shards).prepare_model(build_model(cfg))
    small = load_config("debug", _sets(tok, "model.vocab_size=280"))
    with pytest.raises(ConfigError, match="the teacher's vocabulary has 280 tokens, the student's"):
        Distill(cfg, shards, teacher=build_model(small)).prepare_model(build_model(cfg))


def test_teacher_with_another_tokenizer_is_refused(tok, tmp_path):  # noqa: F811
    import json

    from scratchlm.tokenizer.bpe import train_tokenizer

    src = tmp_path / "other.txt"
    src.write_text("entirely different text for another tokenizer\n" * 30, encoding="utf-8")
    other = train_tokenizer(tmp_path / "other", vocab_size=300, inputs=[src], show_progress=False)
    cfg = load_config("debug", ["model.vocab_size=300"])
    teacher = save_run(tmp_path / "teacher", build_model(cfg), cfg, other)
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"kind": "sft", "tokenizer_hash": "0" * 64}), encoding="utf-8")
    scfg = load_config("debug", ["model.vocab_size=300", "train.objective=distill", f"distill.teacher={teacher}",
                                 f"train.data={data}"])
    shards, _ = _sft_shards(tok)
    with pytest.raises(ConfigError, match=r"--teacher .*teacher: its tokenizer.json \(sha256 .*\) is not the one"):
        Distill(scfg, shards).prepare_model(build_model(scfg))


def test_teacher_data_writes_checked_sft_conversations_that_prepare_accepts(chat_run, tmp_path, capsys):
    # Sequence-level distillation data from a real (tiny, trained) teacher: its <think> trace kept, wrong answers
    # dropped by --check, and the file is SFT data as `prepare` reads it.
    import json

    from scratchlm.cli import main
    from scratchlm.shards.prepare import prepare

    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "What is 2 plus 3?", "answer": "5", "task": "add1"},
            {"prompt": [{"role": "user", "content": "What is 2 plus 3?"}], "answer": "6", "task": "add1"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "teacher.jsonl"
    assert main(["train", "teacher-data", str(chat_run), "--prompts", str(prompts), "--out", str(out), "--check",
                 "--max-new-tokens", "16"]) == 0
    assert "1 conversations from 2 teacher answers to 2 prompts" in capsys.readouterr().out
    (rec,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rec["conversations"][-1] == {"role": "assistant", "content": "<think>2+3=5</think>5"} and rec["answer"] == "5"
    prepare("sft", chat_run, [out], tmp_path / "shards", dedup=False)
    assert json.loads((tmp_path / "shards" / "meta.json").read_text())["n_docs"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    assert main(["train", "teacher-data", str(chat_run), "--prompts", str(bad), "--out", str(out), "--check"]) == 1
    assert "bad.jsonl:1: --check needs" in capsys.readouterr().err
