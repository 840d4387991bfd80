"""`scratchlm prepare` at MiniMind's scale: wall time, MB/s and peak RSS on generated MiniMind-format files.

For each size, writes a MiniMind-pretrain-format .jsonl (`scratchlm.data.minimind_format`; `<|im_start|>…<|im_end|>`
segments, so the run uses `--special-tokens-in-text`) and runs the real CLI in a child process; the child's
peak resident set is its VmHWM, polled from /proc while it runs (`run_measured` says why not ru_maxrss).
With --results, writes docs/results/<name>.json through `scratchlm.results.write_results`.

    python bench/prepare_scale.py --mb 20 1000 [--workdir DIR] [--tokenizer DIR] [--results docs/results/prepare_scale.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratchlm.data.minimind_format import write_pretrain_jsonl


def _vm_hwm_mb(pid: int) -> float | None:
    """The process's peak resident set so far (VmHWM of /proc/PID/status, MB), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def run_measured(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """Run `cmd` with stdout+stderr to `log`; returns rc, wall seconds and the child's peak RSS in MB.

    The peak is VmHWM polled from /proc while the child runs, not `wait4`'s ru_maxrss: Linux keeps ru_maxrss across
    exec, so a child forked from a large parent (pytest at 2.4 GB in CI) reports the parent's size. VmHWM belongs to
    the exec'd image alone and only grows, so the last reading misses at most the final poll interval."""
    peak = 0.0
    with open(log, "wb") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            hwm = _vm_hwm_mb(proc.pid)
            peak = max(peak, hwm or 0.0)
            time.sleep(0.02)
        wall = time.perf_counter() - t0
    return {"rc": proc.returncode, "wall_s": wall, "peak_rss_mb": peak}


def prepare_cmd(tokenizer: Path, src: Path, out: Path) -> list[str]:
    """The `scratchlm prepare` command for a MiniMind pretrain file (markers parsed as the control tokens)."""
    return [sys.executable, "-m", "scratchlm", "prepare", "--kind", "pretrain", "--tokenizer", str(tokenizer),
            "--input", str(src), "--out", str(out), "--special-tokens-in-text", "--quiet"]


def measure(size_mb: float, workdir: Path, tokenizer: Path, seed: int = 0) -> dict:
    """Generate (or reuse) a `size_mb` file, prepare it in a child process, return its numbers."""
    src = workdir / f"minimind-pretrain-{size_mb:g}mb.jsonl"
    if not src.exists():
        write_pretrain_jsonl(src, int(size_mb * 1e6), seed=seed)
    out = workdir / f"shards-{size_mb:g}mb"
    r = run_measured(prepare_cmd(tokenizer, src, out), workdir / f"prepare-{size_mb:g}mb.log")
    if r["rc"]:
        raise SystemExit(f"prepare failed (rc {r['rc']}): see {workdir / f'prepare-{size_mb:g}mb.log'}")
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    mb = src.stat().st_size / 1e6
    return {"file_mb": round(mb, 1), "docs_read": meta["counts"]["read"], "docs_kept": meta["counts"]["kept"],
            "tokens": meta["n_tokens"], "wall_s": round(r["wall_s"], 1), "prepare_s": meta["seconds"],
            "mb_per_s": round(mb / r["wall_s"], 2), "docs_per_s": round(meta["counts"]["read"] / r["wall_s"]),
            "peak_rss_mb": round(r["peak_rss_mb"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, nargs="+", default=[20.0, 200.0], help="file sizes in MB (default 20 200)")
    ap.add_argument("--workdir", help="where files and shards go (default: a temporary folder, removed)")
    ap.add_argument("--tokenizer", help="tokenizer folder (default: a 6400-vocab BPE trained on 5 MB of the data)")
    ap.add_argument("--results", help="write the numbers to this JSON (docs/results/NAME.json)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        tokenizer = Path(args.tokenizer) if args.tokenizer else train_small_tokenizer(workdir)
        rows = {}
        for size in args.mb:
            rows[f"{size:g}mb"] = row = measure(size, workdir, tokenizer)
            print(json.dumps({f"{size:g}mb": row}), flush=True)
        if args.results:
            from scratchlm.results import write_results

            write_results(args.results, Path(args.results).stem, rows, seed=0, split="generated")


def train_small_tokenizer(workdir: Path) -> Path:
    """A 6400-vocab BPE (MiniMind's size) trained on 5 MB of generated MiniMind-format text."""
    from scratchlm.tokenizer.bpe import train_tokenizer

    sample = workdir / "tok-sample.jsonl"
    write_pretrain_jsonl(sample, 5_000_000, seed=1)
    return train_tokenizer(workdir / "tok", vocab_size=6400, inputs=[sample], show_progress=False)


if __name__ == "__main__":
    main()
