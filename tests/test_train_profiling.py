"""train.profile_steps: the loop's profiler writes a trace and a breakdown whose matmul FLOPs are the model's."""

import json

import pytest
import torch

from scratchlm.config import ConfigError, load_config
from scratchlm.runs import build_model
from scratchlm.train.loop import train
from scratchlm.train.objectives import Pretrain
from scratchlm.train.profiling import op_kind
from tests.test_train_loop import _shards

SETS = ["train.batch_size=2", "train.seq_len=32", "train.max_steps=5", "train.log_every=1", "train.eval_every=0",
        "train.save_every=0", "train.warmup_steps=1", "train.profile_steps=2", "train.profile_from=3"]


def test_profiled_steps_write_a_trace_and_a_breakdown_of_the_model_s_matmuls(tmp_path):
    cfg = load_config("debug", SETS)
    model = build_model(cfg)
    train(cfg, Pretrain(cfg, _shards()), tmp_path / "run", model, progress=False)
    prof = tmp_path / "run" / "profile"
    assert json.loads((prof / "trace.json").read_text())["traceEvents"]
    assert "aten::mm" in (prof / "ops.txt").read_text()
    b = json.loads((prof / "breakdown.json").read_text())
    assert b["steps"] == 2
    ms = b["ms_per_step"]
    # forward + backward is its own self time plus its parts, and the step holds both regions
    parts = sum(ms.get(f"fwd_bwd.{k}", 0.0) for k in ("matmul", "attention", "compiled", "other"))
    assert parts == pytest.approx(ms["fwd_bwd.total"], rel=1e-6)
    assert 0 < ms["fwd_bwd.total"] + ms["optimizer.total"] <= ms["step"] + 1e-6
    assert ms["fwd_bwd.matmul"] > 0 and ms["fwd_bwd.attention"] > 0
    # every weight matrix is multiplied three times per token (forward, grad of input, grad of weight): 6·T·N FLOPs
    tokens = 2 * 32
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert b["fwd_bwd_matmul_flops_per_step"] == pytest.approx(6 * tokens * linear, rel=1e-9)
    # each row carries its recorded input shapes (bench/profile_train.py times them alone)
    assert all(r["op"] == f"{r['op'].split(' ')[0]} {r['shapes']}" for r in b["matmul_shapes"])


def test_a_run_that_ends_inside_the_profiled_steps_writes_those_it_ran(tmp_path):
    cfg = load_config("debug", [*SETS, "train.profile_from=4", "train.profile_steps=3"])  # steps 4-6 of 5
    train(cfg, Pretrain(cfg, _shards()), tmp_path / "run", build_model(cfg), progress=False)
    assert json.loads((tmp_path / "run" / "profile" / "breakdown.json").read_text())["steps"] == 2


def test_a_run_that_ends_before_the_profiled_steps_says_so(tmp_path, capsys):
    cfg = load_config("debug", [*SETS, "train.profile_from=7"])  # steps 7-8 of 5
    train(cfg, Pretrain(cfg, _shards()), tmp_path / "run", build_model(cfg), progress=False)
    assert "the run ended after 5 step(s), before step 8" in capsys.readouterr().out
    assert not (tmp_path / "run" / "profile").exists()


def test_no_profile_folder_unless_asked(tmp_path):
    cfg = load_config("debug", [s for s in SETS if "profile" not in s])
    train(cfg, Pretrain(cfg, _shards()), tmp_path / "run", build_model(cfg), progress=False)
    assert not (tmp_path / "run" / "profile").exists()


def test_profile_from_must_leave_a_warm_up_step():
    with pytest.raises(ConfigError, match="profile_from"):
        load_config("debug", ["train.profile_from=1"])


@pytest.mark.parametrize("name,kind", [("aten::mm", "matmul"), ("aten::addmm", "matmul"), ("aten::bmm", "matmul"),
                                       ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
                                       ("## Call CompiledFxGraph abc ##", "compiled"), ("aten::add_", "other")])
def test_op_kinds(name, kind):
    assert op_kind(name) == kind
