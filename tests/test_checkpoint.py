"""Checkpoints: atomic layout, keep-last-K, exact RNG restore, tied weights, safe loading."""

import json
import random

import numpy as np
import pytest
import torch

from scratchlm.config import load_config
from scratchlm.run import build_model, load_weights, save_model, tied_aliases
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
