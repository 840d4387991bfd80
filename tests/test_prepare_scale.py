"""`scratchlm prepare` at scale: memory stays flat as the input grows, and the run reports its throughput.

Each size runs the real CLI in a child process on a generated MiniMind-pretrain-format file (`<|im_start|>…
<|im_end|>` segments, `--special-tokens-in-text`); the child's own peak RSS is its VmHWM (bench/prepare_scale.py's
`run_measured`: ru_maxrss would carry pytest's own size across exec). The CI variant
uses short documents (many documents per MB), so per-document state that grows — a Python set of hashes, every
document kept in a list — shows up in seconds; the slow variant is MiniMind-shaped (~1 KB lines) at 20 vs 200 MB.
"""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchlm.data.hashset import Int64Set
from scratchlm.data.minimind_format import write_pretrain_jsonl
from scratchlm.tokenizer.bpe import train_tokenizer

SRC = str(Path(__file__).resolve().parents[1] / "src")
PEAK_BOUND_MB = 400  # the whole child (Python, numpy, tokenizers, one batch in flight); measured 199-203 / 231-241 MB
# The child's RSS also grows with glibc's per-thread malloc arenas, which the tokenizer's worker threads fragment:
# measured +28..+38 MB from 22 k to 128 k documents with the default arenas, +15 MB with MALLOC_ARENA_MAX=1, while
# what Python and numpy hold stays flat (below). So the RSS bound is loose; the per-document bound is on traced memory.
RSS_GROWTH_BOUND_MB = 80
# Per-document state that may grow: 6 int64 keys (exact + 5 LSH bands) = 48 bytes, twice that while a merge holds
# both inputs and the output. A Python set of the same keys measured 360 bytes a document (planted, 2026-12-07).
MAX_TRACED_BYTES_PER_DOC = 150


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("scale_tok")
    write_pretrain_jsonl(d / "sample.jsonl", 1_000_000, seed=1)
    return train_tokenizer(d / "tok", vocab_size=1000, inputs=[d / "sample.jsonl"], show_progress=False)


def run_prepare(tok_dir: Path, src: Path, out: Path) -> tuple[float, str, dict]:
    """Run `scratchlm prepare` in a child; its peak RSS in MB, its stdout, and the dataset's meta.json."""
    cmd = [sys.executable, "-m", "scratchlm", "prepare", "--kind", "pretrain", "--tokenizer", str(tok_dir),
           "--input", str(src), "--out", str(out), "--special-tokens-in-text", "--quiet"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    log = out.with_suffix(".log")
    run = _bench().run_measured(cmd, log, env)
    text = log.read_text()
    assert run["rc"] == 0, text
    return run["peak_rss_mb"], text, json.loads((out / "meta.json").read_text(encoding="utf-8"))


def _bench():
    """bench/prepare_scale.py, whose `run_measured` is the one peak-RSS measurement of a prepare child."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_scale", Path(__file__).resolve().parents[1] / "bench" / "prepare_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def traced_peak_mb(tok_dir: Path, src: Path, out: Path) -> tuple[float, dict]:
    """Run prepare in this process under tracemalloc; the peak of Python + numpy allocations above the start, in MB.

    numpy reports its buffers to tracemalloc, so the dedup key arrays count; the tokenizer's Rust heap does not."""
    import tracemalloc

    from scratchlm.shards.prepare import prepare

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        meta = prepare("pretrain", tok_dir, [src], out, special_tokens_in_text=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - base) / 2**20, meta


def check_flat(tmp_path: Path, tok_dir: Path, small_mb: float, large_mb: float, max_growth_mb: float, **gen) -> None:
    peaks, docs = [], []
    for mb in (small_mb, large_mb):
        src = tmp_path / f"in-{mb:g}.jsonl"
        n_lines = write_pretrain_jsonl(src, int(mb * 1e6), seed=0, **gen)
        peak, out, meta = run_prepare(tok_dir, src, tmp_path / f"out-{mb:g}")
        # every line is a distinct document, and the markers were parsed (not warned about); short lines of
        # frequent words make a few LSH near-dup hits (163 of 22,000 at 3 MB), MiniMind-sized ones none
        c = meta["counts"]
        assert c["read"] == n_lines and c["exact_dups"] == 0 and c["kept"] + c["near_dups"] == n_lines
        assert c["kept"] >= 0.97 * n_lines
        assert c["control_string_docs"] == n_lines and "warning" not in out
        # the summary reports throughput: bytes as read, MB/s and docs/s
        assert meta["input_bytes"] == src.stat().st_size
        m = re.search(r"read ([\d,.]+) MB / ([\d,]+) docs in ([\d.]+)s: ([\d,.]+) MB/s, ([\d,]+) docs/s", out)
        assert m, out
        assert float(m[4].replace(",", "")) > 0 and int(m[2].replace(",", "")) == n_lines
        peaks.append(peak)
        docs.append(n_lines)
    print(f"peak RSS {peaks[0]:.0f} MB ({docs[0]:,} docs) vs {peaks[1]:.0f} MB ({docs[1]:,} docs)")
    assert docs[1] >= 5 * docs[0]
    assert peaks[1] < PEAK_BOUND_MB, peaks
    assert peaks[1] - peaks[0] < max_growth_mb, (peaks, docs)
    # What Python and numpy hold: flat but for the dedup keys. A warm-up run first, so imports count in neither.
    warm = tmp_path / "warm.jsonl"
    write_pretrain_jsonl(warm, 20_000, seed=1, **gen)
    traced_peak_mb(tok_dir, warm, tmp_path / "traced-warm")
    traced = [traced_peak_mb(tok_dir, tmp_path / f"in-{mb:g}.jsonl", tmp_path / f"traced-{mb:g}")[0]
              for mb in (small_mb, large_mb)]
    per_doc = (traced[1] - traced[0]) * 2**20 / (docs[1] - docs[0])
    print(f"traced peak {traced[0]:.1f} vs {traced[1]:.1f} MB: {per_doc:.0f} bytes per added document")
    assert per_doc < MAX_TRACED_BYTES_PER_DOC, (per_doc, traced, docs)


def test_prepare_memory_is_flat_ci(tmp_path, tok_dir):
    """3 MB vs 18 MB of ~150-byte lines (~22 k vs ~128 k documents): child RSS loosely bounded, traced memory under
    150 bytes per added document (measured 47; a Python set of the keys, planted, 360)."""
    check_flat(tmp_path, tok_dir, 3, 18, RSS_GROWTH_BOUND_MB, words_per_segment=(8, 24), max_segments=1)


@pytest.mark.slow
def test_prepare_memory_is_flat_minimind_sized(tmp_path, tok_dir):
    """20 MB vs 200 MB of MiniMind-shaped lines (~1.2 KB): growth under 30 MB over ~150 k more documents."""
    check_flat(tmp_path, tok_dir, 20, 200, 30)


def test_int64set_matches_a_python_set_and_costs_8_bytes_a_key():
    rng = np.random.default_rng(0)
    s, ref = Int64Set(), set()
    for _ in range(200):
        batch = rng.integers(-(2**40), 2**40, int(rng.integers(0, 300)))
        batch = np.concatenate([batch, batch[: len(batch) // 4]])  # duplicates within a batch
        probe = np.concatenate([batch, rng.integers(-(2**40), 2**40, 50)])
        assert s.contains(probe).tolist() == [int(k) in ref for k in probe]
        s.add(batch)
        ref.update(batch.tolist())
        assert len(s) == len(ref) and s.nbytes == 8 * len(ref)
    assert len(s._levels) <= 2 * int(np.log2(len(ref))) + 1  # merges keep O(log n) levels
    edge = np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max])
    assert s.contains(edge).tolist() == [int(k) in ref for k in edge]
    s.add(edge)
    assert s.contains(edge).all() and s.contains(np.array([[0, 5], [-1, 7]])).shape == (2, 2)
