"""Checkpoints: atomic layout, keep-last-K, exact RNG restore, tied weights, safe loading."""

import json
import random

import numpy as np
import pytest
import torch

from scratchlm.config import load_config
from scratchlm.runs import build_model, load_weights, save_model, tied_aliases
from scratchlm.train.checkpoint import (
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def _model():
    return build_model(load_config("debug"))


def _save(root, step, model, keep_last=3):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long), targets=torch.zeros(1, 4, dtype=torch.long)).loss.backward()
    opt.step()
    return save_checkpoint(root, step, model.state_dict(), opt.state_dict(), {"objective": {"position": step}},
                           load_config("debug"), tied_aliases(model), keep_last)


def test_save_load_roundtrip_and_layout(tmp_path):
    model = _model()
    path = _save(tmp_path / "ckpt", 7, model)
    assert path.name == "step-7"
    assert sorted(p.name for p in path.iterdir()) == [
        "config.toml", "model.safetensors", "optimizer.pt", "rng.pt", "trainer.json"]
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))
    ck = load_checkpoint(path)
    assert ck.step == 7 and ck.trainer["objective"] == {"position": 7}
    # tied lm_head is stored once and restored from the embedding
    assert "lm_head.weight" not in ck.model and "embed.weight" in ck.model
    state = model.state_dict()
    for k, v in ck.model.items():
        assert torch.equal(v, state[k])
    assert set(ck.optimizer) == {"state", "param_groups"}


def test_keep_last_k_and_latest(tmp_path):
    model = _model()
    for step in (2, 4, 6, 8):
        _save(tmp_path, step, model, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6, 8]
    assert latest_checkpoint(tmp_path).name == "step-8"


def test_stale_temp_folder_is_ignored_then_removed(tmp_path):
    model = _model()
    _save(tmp_path, 2, model)
    stale = tmp_path / ".tmp-step-4"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a file")
    assert latest_checkpoint(tmp_path).name == "step-2"  # a half-written save is never picked
    _save(tmp_path, 4, model)
    assert not stale.exists()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]


def test_incomplete_checkpoint_is_a_clear_error(tmp_path):
    path = _save(tmp_path, 3, _model())
    (path / "optimizer.pt").unlink()
    with pytest.raises(FileNotFoundError, match="missing optimizer.pt"):
        load_checkpoint(path)


def test_rng_capture_restores_every_generator():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    js, tensors = capture_rng()
    js = json.loads(json.dumps(js))  # it must survive the JSON file
    first = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(js, tensors)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_save_model_load_weights_keeps_ties(tmp_path):
    a, b = _model(), build_model(load_config("debug", ["train.seed=5"]))
    save_model(a, tmp_path / "m.safetensors")
    load_weights(b, tmp_path / "m.safetensors")
    assert b.lm_head.weight is b.embed.weight
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_load_weights_shape_mismatch_names_the_file(tmp_path):
    save_model(_model(), tmp_path / "m.safetensors")
    other = build_model(load_config("debug", ["model.n_layers=3"]))
    with pytest.raises(ValueError, match="m.safetensors.*unexpected|m.safetensors.*missing"):
        load_weights(other, tmp_path / "m.safetensors")


@pytest.mark.slow
@pytest.mark.ci
def test_sigkill_while_saving_resumes_from_previous_checkpoint(tmp_path):
    """Kill -9 a training process in the middle of writing a checkpoint: the previous checkpoint is
    intact, the half-written one is never used, and resuming reproduces an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from scratchlm.shards.prepare import prepare
    from scratchlm.tokenizer.bpe import train_tokenizer
    from scratchlm.train.stage import train_stage

    text = tmp_path / "text.txt"
    rng = np.random.default_rng(0)
    text.write_text("\n\n".join(" ".join(rng.choice(["a", "bc", "def", "gh", "ij"], size=40)) for _ in range(200)))
    tok = train_tokenizer(tmp_path / "tok", vocab_size=300, inputs=[text], show_progress=False)
    prepare("pretrain", tok, [text], tmp_path / "data", dedup=False)
    sets = ["model.vocab_size=300", "train.max_steps=6", "train.save_every=2", "train.seq_len=16",
            "train.batch_size=2", "train.log_every=1", "train.eval_every=0"]
    out = tmp_path / "run"
    train_stage("pretrain", out, "debug", sets, str(tmp_path / "data"), stop_at_step=2, progress=False)
    good = {p.name: p.read_bytes() for p in (out / "checkpoints" / "step-2").iterdir()}

    cmd = [sys.executable, "-m", "scratchlm.cli", "train", "pretrain", "--config", "debug", "--resume",
           "--data", str(tmp_path / "data"), "--out", str(out), "--no-progress"] + sum((["--set", s] for s in sets), [])
    proc = subprocess.Popen(cmd, env=dict(os.environ, SCRATCHLM_TEST_SAVE_SLEEP="60"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    half = out / "checkpoints" / ".tmp-step-4" / "model.safetensors"
    deadline = time.time() + 120
    while not half.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert half.exists(), proc.communicate()[0].decode()[-2000:] if proc.poll() is not None else "timeout"
    proc.send_signal(signal.SIGKILL)  # in the middle of the save: weights written, optimizer not
    proc.wait()

    assert latest_checkpoint(out / "checkpoints").name == "step-2"
    assert {p.name: p.read_bytes() for p in (out / "checkpoints" / "step-2").iterdir()} == good
    rest = train_stage("pretrain", out, "debug", sets, str(tmp_path / "data"), resume=True, progress=False)
    assert rest.step == 6 and not list((out / "checkpoints").glob(".tmp-*"))
    full = train_stage("pretrain", tmp_path / "full", "debug", sets, str(tmp_path / "data"), progress=False)
    logged = [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(logged, full.losses, rtol=0, atol=1e-6)


def test_objective_state_with_tensors_goes_to_objective_pt(tmp_path):
    # A rollout batch kept between two optimisation passes: tensors (and plain fields) in the objective's state.
    buffer = [{"input_ids": torch.arange(6).view(2, 3), "old_logp": torch.randn(2, 3), "stats": {"reward": 0.5}}]
    path = save_checkpoint(tmp_path / "ckpt", 3, {"w": torch.ones(2)}, {}, {"objective": {"position": 8,
                                                                                          "buffer": buffer}})
    assert (path / "objective.pt").exists() and "buffer" not in (path / "trainer.json").read_text()
    got = load_checkpoint(path).trainer["objective"]
    assert got["position"] == 8 and got["buffer"][0]["stats"] == {"reward": 0.5}
    assert torch.equal(got["buffer"][0]["old_logp"], buffer[0]["old_logp"])
    (path / "objective.pt").unlink()
    with pytest.raises(FileNotFoundError, match="objective.pt"):
        load_checkpoint(path)
