"""The machine's memory bandwidth, STREAM-style: the physical floor beside the software one (a GEMV pass).

    python bench/stream.py [--mb 512] [--repeats 10] [--threads N]

Three kernels over fp32 buffers far larger than any cache (default 512 MB each), with torch's CPU threads:
- read:  s = sum(a)            bytes moved = size        (what decoding a weight does: read it once)
- copy:  b = a                 bytes moved = 2 × size    (STREAM's Copy)
- triad: a = b + q·c           bytes moved = 3 × size    (STREAM's Triad)
Best of --repeats, as STREAM reports, in GB/s (10⁹ bytes). Write-allocate traffic is not counted, as in STREAM.
bench_decode.py imports `measure_bandwidth` to put decode speed against the bytes it must read.
"""

from __future__ import annotations

import scratchlm  # noqa: F401  (first: sets OpenMP's wait policy before torch loads it, see scratchlm/__init__.py)

import argparse
import time

import torch

KERNELS = ("read", "copy", "triad")


@torch.inference_mode()
def measure_bandwidth(mb: int = 512, repeats: int = 10) -> dict[str, float]:
    """{kernel: best GB/s} for read, copy and triad over three fp32 buffers of `mb` MB each."""
    if mb < 64:
        raise ValueError(f"--mb {mb}: buffers under 64 MB can sit in a server CPU's caches; use at least 64")
    n = mb * 1_000_000 // 4
    a, b, c = torch.rand(n), torch.rand(n), torch.rand(n)  # touched once here: no page faults in the timing
    size = a.numel() * a.element_size()
    moved = {"read": size, "copy": 2 * size, "triad": 3 * size}
    ops = {"read": lambda: a.sum(), "copy": lambda: b.copy_(a), "triad": lambda: torch.add(b, c, alpha=3.0, out=a)}
    best = {k: float("inf") for k in KERNELS}
    for _ in range(repeats):
        for k in KERNELS:  # interleaved, so a noisy neighbour slows every kernel alike
            t = time.perf_counter()
            ops[k]()
            best[k] = min(best[k], time.perf_counter() - t)
    return {k: moved[k] / best[k] / 1e9 for k in KERNELS}


def main() -> None:
    """Print the three bandwidths."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=512, help="MB per buffer (three buffers; default 512)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bw = measure_bandwidth(args.mb, args.repeats)
    print(f"memory bandwidth, {torch.get_num_threads()} thread(s), 3 × {args.mb} MB fp32 buffers, best of {args.repeats}: "
          + " | ".join(f"{k} {v:5.1f} GB/s" for k, v in bw.items()))


if __name__ == "__main__":
    main()
