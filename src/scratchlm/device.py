"""The one place that picks devices and dtypes: fp32 on CPU, bf16 autocast on CUDA.

CPU threads: torch's default count (one per core); scratchlm/__init__.py makes OpenMP threads wait passively
(OMP_WAIT_POLICY=PASSIVE) because spinning threads collapse throughput on shared cores. `one_cpu_thread` runs
an op too small to share on the calling thread alone.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(pref: str = "auto") -> torch.device:
    """`auto` → cuda if available, else mps, else cpu; anything else is taken as given."""
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={pref!r} requested but CUDA is not available on this machine")
    return dev


def pick_dtype(device: torch.device, pref: str = "auto") -> torch.dtype:
    """Compute dtype: `auto` → bf16 on CUDA with bf16 support, else fp32."""
    if pref == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return _DTYPES[pref]


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Mixed-precision context for forward passes; a no-op in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def cpu_threads(n: int, active: bool = True) -> Iterator[None]:
    """Run the block with torch on `n` CPU threads (when `active`), then restore the count it had.

    torch's thread count is process-wide, so another Python thread running torch inside the block uses `n` too.
    """
    if not active or torch.compiler.is_compiling():  # a compiled graph picks its own threads
        yield
        return
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_cpu_thread(active: bool = True) -> ContextManager:
    """Run the block on one CPU thread (when `active`): for ops smaller than a thread's wake-up.

    A passive OpenMP thread sleeps between parallel regions, and waking it costs more than a decode step's
    attention does on one core (1 query row over ~100 keys: 60–100 µs at 2 threads vs ~30 µs at 1).
    """
    return cpu_threads(1, active)
