"""The loop reaches every backend (one process, DDP, FSDP2, DeepSpeed ZeRO) through the one Backend interface:
a recording backend that forwards to the real one sees the same calls in the same order, and the run is
unchanged by the recording."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchlm.config import load_config
from scratchlm.runs import build_model
from scratchlm.train import loop
from scratchlm.train.distributed import Backend, TorchBackend
from scratchlm.train.objectives import Pretrain
from scratchlm.train.zero import DeepSpeedBackend

SETS = ["train.batch_size=2", "train.seq_len=16", "train.log_every=1", "train.eval_every=0", "train.save_every=0",
        "train.warmup_steps=1", "train.max_steps=2", "train.grad_accum=2"]
# What the loop calls for a 2-step run with 2 micro-batches per step, then the final save and the final model.
STEP = ["set_lr", "micro_batch(last=False)", "backward(n_micro=2)", "micro_batch(last=True)", "backward(n_micro=2)",
        "step"]
EXPECTED = ["wrap", *STEP, *STEP, "model_state", "optimizer_state", "full_model"]


class Recording(Backend):
    """Forwards every Backend call to a real backend and records it: the loop must need nothing else."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.info)
        self.inner, self.calls = inner, []

    @property
    def model(self):
        return self.inner.model

    @model.setter
    def model(self, value):  # Backend.__init__ sets it; the real backend owns it
        pass

    def wrap(self, raw, make_optimizer):
        self.calls.append("wrap")
        self.raw = raw
        return self.inner.wrap(raw, make_optimizer)

    def set_lr(self, lr):
        self.calls.append("set_lr")
        self.inner.set_lr(lr)

    @contextlib.contextmanager
    def micro_batch(self, last):
        self.calls.append(f"micro_batch(last={last})")
        with self.inner.micro_batch(last):
            yield

    def backward(self, loss, n_micro):
        self.calls.append(f"backward(n_micro={n_micro})")
        self.inner.backward(loss, n_micro)

    def step(self, grad_clip):
        self.calls.append("step")
        return self.inner.step(grad_clip)

    def model_state(self):
        self.calls.append("model_state")
        return self.inner.model_state()

    def optimizer_state(self):
        self.calls.append("optimizer_state")
        return self.inner.optimizer_state()

    def load_optimizer_state(self, state):
        self.calls.append("load_optimizer_state")
        self.inner.load_optimizer_state(state)

    def full_model(self, plain_from):
        self.calls.append("full_model")
        return self.inner.full_model(plain_from)


def record_backends(monkeypatch) -> list[Recording]:
    """Make the loop's backends recording ones; returns the list they are appended to."""
    made, real = [], loop.make_backend

    def make(cfg, info, objective):
        made.append(Recording(real(cfg, info, objective)))
        return made[-1]

    monkeypatch.setattr(loop, "make_backend", make)
    return made


def _shards():
    from test_train_loop import ArrayShards

    base = np.random.default_rng(0).integers(0, 512, size=97)
    return ArrayShards(np.tile(base, 40)[:3000], doc_starts=(0, 700, 1500))


def _train(cfg, out, **kw):
    return loop.train(cfg, Pretrain(cfg, _shards()), out, build_model(cfg), progress=False, **kw)


def test_one_process_goes_through_the_backend_interface(tmp_path, monkeypatch):
    cfg = load_config("debug", SETS)
    plain = _train(cfg, tmp_path / "plain")
    made = record_backends(monkeypatch)
    recorded = _train(load_config("debug", SETS), tmp_path / "recorded")
    assert len(made) == 1 and isinstance(made[0].inner, TorchBackend)
    assert made[0].calls == EXPECTED
    assert recorded.losses == plain.losses  # the recording changes nothing, to the last bit
    # a resume loads the optimizer state through the backend too
    _train(load_config("debug", SETS), tmp_path / "split", stop_at_step=1)
    _train(load_config("debug", SETS), tmp_path / "split", resume=True)
    assert made[-1].calls[:2] == ["wrap", "load_optimizer_state"]


@pytest.mark.slow
def test_deepspeed_goes_through_the_backend_interface(tmp_path, monkeypatch):
    pytest.importorskip("deepspeed")
    made = record_backends(monkeypatch)
    sets = SETS + ["train.deepspeed=deepspeed_zero2"]
    _train(load_config("debug", sets), tmp_path / "zero")
    assert len(made) == 1 and isinstance(made[0].inner, DeepSpeedBackend)
    assert made[0].calls == EXPECTED


_SCRIPT = """
import json, sys
from pathlib import Path
import test_train_backends as t
from scratchlm.config import load_config
made = t.record_backends(__import__("pytest").MonkeyPatch())
out = Path(sys.argv[1])
t._train(load_config("debug", t.SETS + sys.argv[2:]), out)
import torch.distributed as dist
rank = dist.get_rank()
(out.parent / f"calls-{rank}.json").write_text(json.dumps({"calls": made[0].calls, "inner": type(made[0].inner).__name__}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_ddp_and_fsdp_go_through_the_backend_interface(tmp_path, parallel):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "run"), f"train.parallel={parallel}"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):  # every process makes the same calls (the collectives among them)
        rec = json.loads((tmp_path / f"calls-{rank}.json").read_text())
        assert rec == {"calls": EXPECTED, "inner": "TorchBackend"}
