"""Writes a token-shard dataset folder crash-safely (the reader is `scratchlm.shards.datasets`).

Layout of a dataset folder:
    meta.json                  written last, atomically: the only entry point a reader trusts
    run-<id>/tokens-00000.bin  token ids, raw little-endian uint16 (vocab ≤ 65535) or uint32
    run-<id>/mask-00000.bin    uint8 loss mask, same length (sft / preference kinds only)
    run-<id>/docs.bin          int64 global start offset of every document
    run-<id>/side.jsonl        one JSON line per document (prompt kind: answer + columns)
Every file is written under a `.tmp` name and renamed when complete; the data of a run lives in its
own `run-<id>/` folder, so a rerun never overwrites files the current meta.json points to. After the
new meta.json is in place, every other `run-*` folder and leftover `.tmp` file is removed: the old
dataset stays readable until the new one is complete, and no stale shard survives.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FORMAT = "scratchlm-shards"
VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size ≤ 65535), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temp file + fsync + rename, so readers see the old or the new file, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def new_run_id() -> str:
    """Sortable, unique name for one prepare run's data folder."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


class ShardWriter:
    """Appends documents to shards of at most `shard_tokens` tokens; `finish` publishes meta.json.

    Use as a context manager: leaving the block with an exception removes this run's files.
    """

    def __init__(
        self,
        out_dir: str | Path,
        kind: str,
        vocab_size: int,
        shard_tokens: int,
        with_mask: bool = False,
        with_side: bool = False,
        run_id: str | None = None,
    ):
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be ≥ 1, got {shard_tokens}")
        self.out_dir = Path(out_dir)
        self.kind, self.vocab_size, self.shard_tokens = kind, vocab_size, shard_tokens
        self.dtype = token_dtype(vocab_size)
        self.with_mask, self.with_side = with_mask, with_side
        self.run_name = "run-" + (run_id or new_run_id())
        self.run_dir = self.out_dir / self.run_name
        self.run_dir.mkdir(parents=True, exist_ok=False)
        self.shards: list[dict] = []
        self.n_tokens = 0
        self.n_docs = 0
        self._shard_fill = 0
        self._tok_f: BinaryIO | None = None
        self._mask_f: BinaryIO | None = None
        self._docs_f = open(self._tmp("docs.bin"), "wb")
        self._side_f = open(self._tmp("side.jsonl"), "w", encoding="utf-8") if with_side else None
        self._done = False

    # --- writing -------------------------------------------------------------------------------

    def _tmp(self, name: str) -> Path:
        return self.run_dir / (name + ".tmp")

    def add(
        self,
        tokens: np.ndarray,
        doc_lens: np.ndarray,
        mask: np.ndarray | None = None,
        side: list[str] | None = None,
    ) -> None:
        """Append documents given back to back: `tokens` [sum(doc_lens)], optional mask, side lines."""
        tokens = np.asarray(tokens)
        doc_lens = np.asarray(doc_lens, dtype=np.int64)
        if int(doc_lens.sum()) != len(tokens):
            raise ValueError(f"doc_lens sum to {int(doc_lens.sum())} but {len(tokens)} tokens were given")
        if (mask is None) == self.with_mask or (mask is not None and len(mask) != len(tokens)):
            raise ValueError(f"mask must be given{' ' if self.with_mask else ' not '}for kind {self.kind}, one per token")
        if (side is None) == self.with_side or (side is not None and len(side) != len(doc_lens)):
            raise ValueError(f"side lines must be given{' ' if self.with_side else ' not '}for kind {self.kind}, one per doc")
        if len(tokens) and int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"token id {int(tokens.max())} ≥ vocab_size {self.vocab_size}: wrong tokenizer?")
        starts = self.n_tokens + np.concatenate([[0], np.cumsum(doc_lens[:-1])]) if len(doc_lens) else doc_lens
        self._docs_f.write(np.asarray(starts, dtype="<i8").tobytes())
        if side is not None:
            self._side_f.write("".join(s + "\n" for s in side))
        self.n_docs += len(doc_lens)
        tokens = tokens.astype(self.dtype.newbyteorder("<"), copy=False)
        mask = None if mask is None else np.asarray(mask, dtype=np.uint8)
        done = 0
        while done < len(tokens):  # split at shard boundaries: documents may span two shards
            if self._tok_f is None:
                self._open_shard()
            take = min(self.shard_tokens - self._shard_fill, len(tokens) - done)
            self._tok_f.write(tokens[done : done + take].tobytes())
            if mask is not None:
                self._mask_f.write(mask[done : done + take].tobytes())
            done += take
            self._shard_fill += take
            self.n_tokens += take
            if self._shard_fill == self.shard_tokens:
                self._close_shard()

    def _open_shard(self) -> None:
        i = len(self.shards)
        self.shards.append({"file": f"{self.run_name}/tokens-{i:05d}.bin", "n_tokens": 0})
        self._tok_f = open(self._tmp(f"tokens-{i:05d}.bin"), "wb")
        if self.with_mask:
            self.shards[-1]["mask"] = f"{self.run_name}/mask-{i:05d}.bin"
            self._mask_f = open(self._tmp(f"mask-{i:05d}.bin"), "wb")
        self._shard_fill = 0

    def _close_shard(self) -> None:
        """Finish the current shard: flush, fsync and rename its files to their final names."""
        shard = self.shards[-1]
        shard["n_tokens"] = self._shard_fill
        for f, key in ((self._tok_f, "file"), (self._mask_f, "mask")):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
                os.replace(f.name, self.out_dir / shard[key])
        self._tok_f = self._mask_f = None

    # --- publishing ----------------------------------------------------------------------------

    def finish(self, meta: dict) -> dict:
        """Close every file, write meta.json (atomically, last) and remove stale data; returns meta."""
        if self._tok_f is not None:
            self._close_shard()
        files = {"doc_index": (self._docs_f, "docs.bin")}
        if self._side_f is not None:
            files["side_file"] = (self._side_f, "side.jsonl")
        for f, _name in files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for f, name in files.values():
            os.replace(f.name, self.run_dir / name)
        full = {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype.name,
            "n_tokens": self.n_tokens,
            "n_docs": self.n_docs,
            "run": self.run_name,
            **meta,
            "shards": self.shards,
            **{key: f"{self.run_name}/{name}" for key, (_f, name) in files.items()},
        }
        write_json_atomic(self.out_dir / "meta.json", full)
        self._done = True
        remove_stale(self.out_dir, keep=self.run_name)
        return full

    def abort(self) -> None:
        """Drop this run's files (the previous dataset, if any, stays as it was)."""
        for f in (self._tok_f, self._mask_f, self._docs_f, self._side_f):
            if f is not None and not f.closed:
                f.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()


def remove_stale(out_dir: Path, keep: str | None) -> None:
    """Remove `run-*` folders other than `keep`, `.staging-*` folders and `*.tmp` files of a dataset folder."""
    if not out_dir.is_dir():
        return
    for p in out_dir.iterdir():
        if p.is_dir() and (p.name.startswith("run-") and p.name != keep or p.name.startswith(".staging-")):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
