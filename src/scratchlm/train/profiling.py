"""train.profile_steps: torch.profiler over a few steps of a run, written into the run folder as a Chrome trace, the
op table and where each step's time went (`step_breakdown`). The breakdown counts host (CPU) time, which on a CPU is
the work itself; on CUDA the kernels run asynchronously and their own times are in the trace (and ops.txt), not in it."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

# The loop's two labelled regions of a step; everything else in a profiled step is the loop's own work.
FORWARD_BACKWARD, OPTIMIZER_STEP = "scratchlm.forward_backward", "scratchlm.optimizer_step"

MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
ATTENTION_MARK = "scaled_dot_product"  # SDPA and its CPU flash kernels, forward and backward
# What inductor's generated code shows up as: its C++ kernels are not aten ops, so their time is the self time of
# the region that calls them.
COMPILED_MARKS = ("Torch-Compiled Region", "CompiledFunction", "CompiledFxGraph", "cpp_fused", "inductor")


def region(name: str) -> AbstractContextManager[Any]:
    """A labelled profiler region (a no-op unless a profiler is recording)."""
    return record_function(name)


class StepProfiler:
    """Records steps profile_from .. profile_from + steps - 1 (1-based) of a run and writes out_dir/profile/."""

    def __init__(self, out_dir: Path, profile_from: int, steps: int) -> None:
        self.out_dir, self.last = Path(out_dir) / "profile", profile_from + steps - 1
        self.written, self.seen = False, 0
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        # one warm-up step before the recorded ones (the profiler's own start-up cost lands there)
        self.prof = profile(activities=activities, record_shapes=True, on_trace_ready=self._write,
                            schedule=schedule(skip_first=profile_from - 2, wait=0, warmup=1, active=steps, repeat=1))

    def __enter__(self) -> StepProfiler:
        self.prof.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.prof.__exit__(*exc)
        if not self.written and exc[0] is None:
            print(f"warning: train.profile_steps: the run ended after {self.seen} step(s), before step {self.last}, "
                  f"the last one to profile; nothing written to {self.out_dir}")

    def step(self) -> None:
        """Mark the end of one training step."""
        self.seen += 1
        self.prof.step()

    def _write(self, prof: profile) -> None:
        self.written = True
        self.out_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.out_dir / "trace.json"))
        (self.out_dir / "ops.txt").write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
        parts = step_breakdown(prof.events())
        (self.out_dir / "breakdown.json").write_text(json.dumps(parts, indent=2) + "\n")


def maybe_profiler(enabled: bool, out_dir: Path, profile_from: int, steps: int) -> AbstractContextManager[Any]:
    """A StepProfiler when `enabled`, else a context whose `step` does nothing."""
    return StepProfiler(out_dir, profile_from, steps) if enabled else nullcontext(_NoProfiler())


class _NoProfiler:
    def step(self) -> None:
        """Nothing to mark."""


def op_kind(name: str) -> str:
    """The part of a training step an op's self time belongs to: matmul, attention, compiled (inductor's fused
    kernels) or other."""
    if name in MATMUL_OPS:
        return "matmul"
    if ATTENTION_MARK in name:
        return "attention"
    if any(m in name for m in COMPILED_MARKS):
        return "compiled"
    return "other"


def matmul_flops(ev: Any) -> float:
    """FLOPs of one recorded matmul event from its input shapes (2·m·k·n, times the batch for bmm); 0 if unknown."""
    shapes = [s for s in (ev.input_shapes or []) if s]
    try:
        if ev.name == "aten::mm":
            (m, k), (_, n) = shapes[0], shapes[1]
            return 2.0 * m * k * n
        if ev.name == "aten::addmm":  # (bias, a, b)
            (m, k), (_, n) = shapes[1], shapes[2]
            return 2.0 * m * k * n
        if ev.name in ("aten::bmm", "aten::baddbmm"):
            a, b = shapes[-2], shapes[-1]
            return 2.0 * a[0] * a[1] * a[2] * b[2]
    except (IndexError, ValueError, TypeError):
        pass
    return 0.0


def _descendants(ev: Any) -> Iterable[Any]:
    stack = list(ev.cpu_children)
    while stack:
        e = stack.pop()
        yield e
        stack.extend(e.cpu_children)


def step_breakdown(events: Iterable[Any]) -> dict[str, Any]:
    """Per-step milliseconds of a profiled run by part: forward + backward split into matmul / attention /
    compiled / other self time, the optimizer step, and the rest of the loop; with the matmuls' FLOPs (from their
    shapes) so that their achieved rate can be set against a peak. `events`: a profiler's FunctionEvents."""
    events = list(events)
    # a step mark with no forward + backward is the loop's tail after its last step (the run ended while recording)
    marks = [e for e in events if e.name.startswith("ProfilerStep")
             and any(c.name == FORWARD_BACKWARD for c in e.cpu_children)]
    steps = max(1, len(marks))  # fewer than asked when the run ended inside the profiled steps
    ms: dict[str, float] = defaultdict(float)
    mm_flops = 0.0
    mm_shapes: dict[str, list[Any]] = {}  # "op [shapes]" -> [input shapes, calls, ms, flops]
    step_ms = sum(e.cpu_time_total for e in marks) / 1e3
    for top in (e for e in events if e.name in (FORWARD_BACKWARD, OPTIMIZER_STEP) and e.cpu_parent is not None
                and e.cpu_parent.name.startswith("ProfilerStep")):
        prefix = "fwd_bwd" if top.name == FORWARD_BACKWARD else "optimizer"
        ms[f"{prefix}.total"] += top.cpu_time_total / 1e3
        ms[f"{prefix}.other"] += top.self_cpu_time_total / 1e3
        for ev in _descendants(top):
            kind = op_kind(ev.name)
            ms[f"{prefix}.{kind}"] += ev.self_cpu_time_total / 1e3
            if kind == "matmul" and prefix == "fwd_bwd":
                f = matmul_flops(ev)
                mm_flops += f
                row = mm_shapes.setdefault(f"{ev.name} {ev.input_shapes}", [ev.input_shapes, 0, 0.0, 0.0])
                row[1] += 1
                row[2] += ev.self_cpu_time_total / 1e3
                row[3] += f
    per = {k: v / steps for k, v in sorted(ms.items())}
    per["step"] = step_ms / steps
    per["loop_outside_regions"] = per["step"] - per.get("fwd_bwd.total", 0.0) - per.get("optimizer.total", 0.0)
    top_shapes = sorted(mm_shapes.items(), key=lambda kv: -kv[1][2])[:12]
    return {"steps": len(marks), "ms_per_step": per, "fwd_bwd_matmul_flops_per_step": mm_flops / steps,
            "matmul_shapes": [{"op": k, "shapes": shp, "calls_per_step": c / steps, "ms_per_step": t / steps,
                               "gflops": f / (t / 1e3) / 1e9 if t else 0.0} for k, (shp, c, t, f) in top_shapes]}
