"""Checkpoints: atomic save (temp folder + rename), keep-last-K, exact RNG capture, safe loading.

A checkpoint is a folder `checkpoints/step-N/` holding
  model.safetensors   weights (tied tensors stored once)
  optimizer.pt        optimizer state keyed by parameter name (loaded with weights_only=True)
  rng.pt              torch CPU/CUDA generator states (uint8 tensors, weights_only-safe)
  trainer.json        step, tokens seen, schedule step, objective data position, python/numpy RNG
  objective.pt        only when the objective's state holds tensors (a rollout batch kept for its next
                      optimisation pass): that whole state, loaded with weights_only=True
  config.toml         the resolved config
It is written to `checkpoints/.tmp-step-N/`, every file fsynced, then renamed: a crash or SIGKILL
while saving leaves only a stale temp folder (removed on the next save), never a half checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from scratchlm.config import Config
from scratchlm.runs import save_weights

_STEP_DIR = re.compile(r"^step-(\d+)$")
# Test hook: seconds to sleep between writing the weights and the optimizer state, so a test can
# SIGKILL the process in the middle of a save.
SAVE_SLEEP_ENV = "SCRATCHLM_TEST_SAVE_SLEEP"


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors plus the trainer's JSON state."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    trainer: dict[str, Any]
    rng_tensors: dict[str, Any]


def capture_rng() -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON-able python/numpy RNG state, tensor RNG state) of this process."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    json_state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    return json_state, tensors


def restore_rng(json_state: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Put back RNG states captured by `capture_rng`."""
    v, state, gauss = json_state["python"]
    random.setstate((v, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = json_state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        cuda = tensors["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def list_checkpoints(ckpt_root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `ckpt_root`, sorted by step (temp folders ignored)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "trainer.json").exists():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    ckpts = list_checkpoints(ckpt_root)
    return ckpts[-1][1] if ckpts else None


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    config: Config | None = None,
    aliases: dict[str, str] | None = None,
    keep_last: int = 3,
) -> Path:
    """Write checkpoints/step-N atomically, then delete all but the newest `keep_last`."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step-*"):  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-step-{step}"
    final = root / f"step-{step}"
    tmp.mkdir()
    save_weights(model_state, tmp / "model.safetensors", aliases)
    if os.environ.get(SAVE_SLEEP_ENV):
        time.sleep(float(os.environ[SAVE_SLEEP_ENV]))
    _save_torch(optimizer_state, tmp / "optimizer.pt")
    json_rng, tensor_rng = capture_rng()
    _save_torch(tensor_rng, tmp / "rng.pt")
    state = dict(trainer_state, step=step, rng=json_rng)
    if _has_tensor(state.get("objective")):  # JSON cannot hold tensors: the objective's state goes to its own file
        _save_torch(state.pop("objective"), tmp / OBJECTIVE_FILE)
        state["objective_file"] = OBJECTIVE_FILE
    _write_text(tmp / "trainer.json", json.dumps(state, indent=1))
    if config is not None:
        config.save(tmp / "config.toml")
        _fsync_file(tmp / "config.toml")
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. the end of a resumed run): replace it
        old = root / f".old-step-{step}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync_dir(root)
    for _, old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder (safetensors + weights_only torch.load; never arbitrary pickle)."""
    path = Path(path)
    need = ["model.safetensors", "optimizer.pt", "rng.pt", "trainer.json"]
    missing = [n for n in need if not (path / n).exists()]
    if missing:
        raise FileNotFoundError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    trainer = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    if trainer.get("objective_file"):
        obj = path / trainer.pop("objective_file")
        if not obj.exists():
            raise FileNotFoundError(f"{path}: incomplete checkpoint, missing {obj.name}")
        trainer["objective"] = torch.load(obj, map_location="cpu", weights_only=True)
    return Checkpoint(
        path=path,
        step=int(trainer["step"]),
        model=load_file(str(path / "model.safetensors")),
        optimizer=torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True),
        trainer=trainer,
        rng_tensors=torch.load(path / "rng.pt", map_location="cpu", weights_only=True),
    )


OBJECTIVE_FILE = "objective.pt"


def _has_tensor(obj: Any) -> bool:
    """Whether a (nested dict / list / tuple) state holds any tensor."""
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return any(_has_tensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(v) for v in obj)
    return False


def _save_torch(obj: Any, path: Path) -> None:
    torch.save(obj, path)
    _fsync_file(path)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    _fsync_file(path)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # a rename is only durable once the directory entry itself is on disk
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
