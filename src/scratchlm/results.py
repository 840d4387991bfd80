"""Results files: every reference number in the README comes from a JSON file under docs/results/, written by the
command that measured it, with what is needed to trace it back (command line, seed, split, commit, machine, date).

`scripts/render_readme.py` renders the README's reference tables from these files, and a test fails when the README
and the files disagree, so a number cannot be edited by hand or outlive the run that produced it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

FORMAT = 1  # bump when the layout of a results file changes


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What ran the measurement: CPU model, cores, torch threads, GPU (if any), python and torch versions."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "os": platform.platform(terse=True)}


def mm_flops(m: int, k: int, n: int, reps: int = 5, dtype: Any = None) -> float:
    """Best FLOP/s of an (m×k)·(k×n) torch.mm on this machine (float32 unless `dtype`)."""
    import time

    import torch

    dtype = dtype or torch.float32
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best


def matmul_peak(n: int = 2048, reps: int = 5, dtype: Any = None) -> float:
    """Best FLOP/s of an n×n×n torch.mm: the machine's matmul peak, and how fast the host is right now (a shared
    host's speed moves; a run's times read against this probe taken during it)."""
    return mm_flops(n, n, n, reps, dtype)


def git_commit(where: Path | None = None) -> str | None:
    """The checked-out commit of the repository holding `where` (this package by default), '+dirty' when the
    tracked files differ from it; None outside a git checkout."""
    cwd = where or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def command_line() -> str:
    """This process's command line as a user would type it (`python -m scratchlm x` reads as `scratchlm x`)."""
    script = Path(sys.argv[0])
    prog = script.name
    if prog in ("__main__.py", "cli.py"):
        prog = "scratchlm"
    elif script.parent.name in ("bench", "scripts"):  # the repo's own scripts, named by their folder
        prog = f"{script.parent.name}/{prog}"
    elif script.parent.name == "experiments" and script.parent.parent.name == "docs":
        prog = f"docs/experiments/{prog}"
    return " ".join([prog, *sys.argv[1:]])


def write_results(path: str | Path, name: str, numbers: dict[str, Any], seed: int | None = None,
                  split: str | None = None, command: str | None = None, notes: str = "") -> Path:
    """Write one results file: `numbers` (JSON-able) with its provenance; returns the path written."""
    path = Path(path)
    doc = {
        "format": FORMAT, "name": name,
        "command": command if command is not None else command_line(),
        "seed": seed, "split": split, "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "notes": notes, "numbers": numbers,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a file
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    """One results file, checked for the fields every renderer relies on."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    missing = [k for k in ("format", "name", "command", "commit", "machine", "numbers") if k not in doc]
    if missing:
        raise ValueError(f"{path}: not a scratchlm results file (missing {', '.join(missing)})")
    if doc["format"] != FORMAT:
        raise ValueError(f"{path}: results format {doc['format']}, this scratchlm reads format {FORMAT}")
    return doc
