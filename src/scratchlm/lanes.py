"""Two lanes of jobs side by side on a CPU: the first in this process, the second in a spawned one, each on half
the threads.

Why, measured on 2 cores: small models use a second thread poorly (a 5.3M reward-model step is only 1.32× faster
on two threads than on one), so two jobs side by side on one thread each (each 1.5–1.8× slower than alone on
two) finish sooner than one after the other. Training losses are the same to the last digit on one thread as on
two; one-token attention differs in rounding (the CPU kernel splits its sums by thread count)."""

from __future__ import annotations

import time
from typing import Any, Callable, Hashable, Sequence

# run(job, progress) -> result; for a second lane it must pickle (a module-level function, or a partial of one)
JobRunner = Callable[[Any, bool], Any]


def two_lanes_fit() -> bool:
    """Whether a second lane helps here: a CPU run (no accelerator) with at least two threads."""
    import torch

    from scratchlm.device import pick_device

    return torch.get_num_threads() >= 2 and pick_device().type == "cpu"


def run_lane(jobs: Sequence[Hashable], run: JobRunner, progress: bool, threads: int,
             seed: int | None = None) -> dict[Any, tuple[Any, float]]:
    """Run `jobs` in order on `threads` CPU threads (seeding torch with `seed` first when given);
    {job: (its result, seconds)}."""
    import torch

    from scratchlm.device import cpu_threads

    if seed is not None:
        torch.manual_seed(seed)  # a spawned process starts unseeded
    done = {}
    with cpu_threads(threads):
        for job in jobs:
            t = time.perf_counter()
            done[job] = (run(job, progress), time.perf_counter() - t)
    return done


def run_lanes(lanes: list[list[Any]], run: JobRunner, progress: bool, seed: int | None = None,
              label: str = "scratchlm") -> dict[Any, tuple[Any, float]]:
    """Run one lane here on every thread, or two: the second in a spawned process (torch seeded with `seed`, no
    progress bars: two processes would draw over each other's), each lane on half the threads. {job: (result,
    seconds)}, the first lane's jobs first; a failure in the second lane is a SystemExit with its traceback."""
    import torch

    if len(lanes) < 2:
        return run_lane(lanes[0], run, progress, torch.get_num_threads()) if lanes else {}
    import multiprocessing

    n = torch.get_num_threads()
    second = max(1, n // 2)  # on one thread both lanes get one: oversubscribed, but never a zero-thread process
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=_second_lane, args=(send, lanes[1], run, second, seed), name="lane-2")
    worker.start()
    send.close()
    try:
        done = run_lane(lanes[0], run, progress, max(1, n - second))
        try:
            status, payload = receive.recv()
        except EOFError:
            worker.join()
            raise SystemExit(f"{label}: the process running {', '.join(map(str, lanes[1]))} died (exit code "
                             f"{worker.exitcode})") from None
    except BaseException:
        worker.terminate()  # a failed or interrupted first lane does not wait for the second
        raise
    finally:
        worker.join()
    if status == "error":
        raise SystemExit(f"{label}: a stage of {', '.join(map(str, lanes[1]))} failed in the second process:\n{payload}")
    done.update(payload)
    return done


def _second_lane(send: Any, jobs: list[Any], run: JobRunner, threads: int, seed: int | None) -> None:
    """The spawned process of `run_lanes`: runs its lane and sends ("ok", results) or ("error", the traceback)."""
    import traceback

    try:
        send.send(("ok", run_lane(jobs, run, False, threads, seed=seed)))
    except BaseException:
        send.send(("error", traceback.format_exc()))
