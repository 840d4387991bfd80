"""DeepSpeed ZeRO-1/2 through the same loop: config checks, and (with DeepSpeed installed) the same losses
as the plain loop, checkpoints that resume across DeepSpeed / plain and 2 processes / 1."""

import json
import sys

import numpy as np
import pytest

from scratchlm.config import ConfigError, load_config
from scratchlm.runs import build_model
from scratchlm.train.loop import train
from scratchlm.train.objectives import Pretrain
from scratchlm.train.zero import resolve_config
from test_train_loop import ArrayShards

SMALL = ["model.vocab_size=512", "model.max_seq_len=64", "train.seq_len=32", "train.batch_size=4",
         "train.warmup_steps=2", "train.log_every=1", "train.eval_every=0", "train.save_every=2", "train.seed=7"]


def _cfg(*extra):
    return load_config("debug", SMALL + list(extra))


def _json(tmp_path, obj, name="ds.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return str(p)


def test_auto_fields_come_from_the_train_config(tmp_path):
    cfg = _cfg("train.grad_accum=3", "train.grad_clip=0.5")
    ds = resolve_config("configs/deepspeed_zero2.json", cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 4 * 3 * 2 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and ds["zero_optimization"]["stage"] == 2
    same = resolve_config(_json(tmp_path, {"train_micro_batch_size_per_gpu": 4}), cfg, world_size=1)
    assert same["train_micro_batch_size_per_gpu"] == 4  # an explicit value equal to train.* is fine


@pytest.mark.parametrize("body, match", [
    ({"train_micro_batch_size_per_gpu": 8}, r"train_micro_batch_size_per_gpu=8 disagrees with train.batch_size=4"),
    ({"gradient_clipping": 2.0}, r"gradient_clipping=2.0 disagrees with train.grad_clip=1.0"),
    ({"optimizer": {"type": "Adam"}}, r"remove the 'optimizer' section"),
    ({"scheduler": {"type": "WarmupLR"}}, r"remove the 'scheduler' section"),
    ({"fp16": {"enabled": True}}, r"remove the 'fp16' section.*train.dtype=bfloat16"),
    ({"bf16": {"enabled": True}}, r"bf16.enabled=True.*train.dtype"),
    ({"zero_optimization": {"stage": 3}}, r"stage=3.*train.parallel=fsdp"),
    ([1, 2], r"JSON object"),
])
def test_bad_deepspeed_configs_are_clear_errors(tmp_path, body, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(_json(tmp_path, body), _cfg(), world_size=1)


def test_shipped_configs_are_found_by_name(tmp_path):
    from scratchlm.train.zero import find_config

    assert find_config("deepspeed_zero2").name == find_config("configs/deepspeed_zero2.json").name
    with pytest.raises(FileNotFoundError, match=r"no such DeepSpeed config file \(shipped: deepspeed_zero2\)"):
        find_config(str(tmp_path / "nope.json"))


def test_invalid_json_names_file_and_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{\n  "zero_optimization": {"stage": 2},\n  oops\n}')
    with pytest.raises(ConfigError, match=r"bad.json:3: not valid JSON"):
        resolve_config(str(p), _cfg(), world_size=1)


def test_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed now raises ImportError
    cfg = _cfg("train.max_steps=1", "train.deepspeed=configs/deepspeed_zero2.json")
    with pytest.raises(ConfigError, match=r"needs DeepSpeed.*scratchlm\[deepspeed\]"):
        train(cfg, Pretrain(cfg, _shards()), tmp_path / "run", build_model(cfg), progress=False)


def _shards():
    base = np.random.default_rng(0).integers(0, 512, size=97)
    return ArrayShards(np.tile(base, 40)[:3000], doc_starts=(0, 700, 1500))


def _train(cfg, out, **kw):
    return train(cfg, Pretrain(cfg, _shards()), out, build_model(cfg), progress=False, **kw)


# Running DeepSpeed compiles its CPU communication op the first time (about a minute, then cached): slow,
# but part of the CI set.
@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("stage", [1, 2])
def test_zero_matches_the_plain_loop_and_checkpoints_cross_over(tmp_path, stage):
    pytest.importorskip("deepspeed")
    ds = _json(tmp_path, {"zero_optimization": {"stage": stage}})
    sets = ["train.max_steps=4", "train.grad_accum=2"]
    plain = _train(_cfg(*sets), tmp_path / "plain")
    zero = _train(_cfg(*sets, f"train.deepspeed={ds}"), tmp_path / "zero")
    np.testing.assert_allclose(zero.losses, plain.losses, rtol=0, atol=1e-5)
    # A ZeRO checkpoint at step 2 resumes without DeepSpeed, and a plain one resumes under ZeRO: same losses.
    half = _train(_cfg(*sets, f"train.deepspeed={ds}"), tmp_path / "z2p", stop_at_step=2)
    rest = _train(_cfg(*sets), tmp_path / "z2p", resume=True)
    np.testing.assert_allclose(half.losses + rest.losses, plain.losses, rtol=0, atol=1e-5)
    half = _train(_cfg(*sets), tmp_path / "p2z", stop_at_step=2)
    rest = _train(_cfg(*sets, f"train.deepspeed={ds}"), tmp_path / "p2z", resume=True)
    np.testing.assert_allclose(half.losses + rest.losses, plain.losses, rtol=0, atol=1e-5)

