"""Read token-shard datasets written by `scratchlm prepare` (layout in `shard_writer`).

`open_shards(dir)` memory-maps the shards; `read(start, length)` returns token ids across shard
boundaries as if the dataset were one array. Per kind:
- pretrain: documents back to back, each ending with `<|endoftext|>`.
- sft: ChatML conversations; `read_mask` gives the loss mask (1 on assistant content + its <|im_end|>).
- preference: two documents per pair, chosen at doc 2i and rejected at 2i+1 (`pair(i)`).
- prompt: prompt ids ending with the generation prompt; `prompt(i)` also returns the answer and the
  record's other columns (task, lang, ...), kept in a side file.
A validation split written with `--val-frac` is the sub-dataset `val/` (`Shards.val`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from scratchlm.shards.writer import FORMAT, VERSION


@dataclass
class Pair:
    """One preference pair: token ids and loss masks of the chosen and rejected conversations."""

    chosen: np.ndarray
    chosen_mask: np.ndarray
    rejected: np.ndarray
    rejected_mask: np.ndarray


@dataclass
class Prompt:
    """A prompt (ids up to and including the assistant generation prompt) with its checkable answer."""

    ids: np.ndarray
    answer: str
    columns: dict


class Shards:
    """A prepared dataset: token ids (and masks) over memory-mapped shards, plus the document index."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{meta_file} not found: {self.path} is not a prepared dataset (or its prepare run did not "
                "finish); run `scratchlm prepare ... --out {self.path}`"
            )
        try:
            self.meta: dict = json.loads(meta_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_file}:{e.lineno}: bad JSON ({e.msg})") from None
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise ValueError(
                f"{meta_file}: format {self.meta.get('format')!r} v{self.meta.get('version')} is not "
                f"{FORMAT!r} v{VERSION}; re-run `scratchlm prepare`"
            )
        self.kind: str = self.meta["kind"]
        self.dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        self.n_tokens: int = int(self.meta["n_tokens"])
        self.n_docs: int = int(self.meta["n_docs"])
        self._tokens: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        for i, shard in enumerate(self.meta["shards"]):
            self._tokens.append(self._map(shard["file"], self.dtype, shard["n_tokens"], f"shards[{i}]"))
            if "mask" in shard:
                self._masks.append(self._map(shard["mask"], np.dtype(np.uint8), shard["n_tokens"], f"shards[{i}].mask"))
        sizes = [len(t) for t in self._tokens]
        self._shard_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # [n_shards + 1]
        if int(self._shard_starts[-1]) != self.n_tokens:
            raise ValueError(f"{meta_file}: shards hold {int(self._shard_starts[-1])} tokens, n_tokens says {self.n_tokens}")
        self.doc_starts: np.ndarray = self._map(self.meta["doc_index"], np.dtype("<i8"), self.n_docs, "doc_index")

    def _map(self, rel: str, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        """Memory-map one file of the dataset, checking that its size matches meta.json."""
        f = self.path / rel
        if not f.is_file():
            raise FileNotFoundError(f"{self.path / 'meta.json'}: {what} file {f} is missing")
        expected = count * dtype.itemsize
        if f.stat().st_size != expected:
            raise ValueError(f"{f}: {f.stat().st_size} bytes, expected {expected} ({what}: {count} × {dtype.name})")
        if count == 0:  # np.memmap refuses empty files
            return np.zeros(0, dtype=dtype)
        return np.memmap(f, dtype=dtype, mode="r", shape=(count,))

    # --- tokens --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.n_tokens

    def _gather(self, arrays: list[np.ndarray], start: int, length: int) -> np.ndarray:
        """Concatenate [start, start+length) across the shard arrays."""
        if start < 0 or length < 0 or start + length > self.n_tokens:
            raise IndexError(f"{self.path}: read({start}, {length}) is outside [0, {self.n_tokens})")
        i = int(np.searchsorted(self._shard_starts, start, side="right")) - 1
        parts = []
        while length > 0:
            lo = start - int(self._shard_starts[i])
            take = min(length, len(arrays[i]) - lo)
            parts.append(arrays[i][lo : lo + take])
            start, length, i = start + take, length - take, i + 1
        if not parts:
            return np.zeros(0, dtype=arrays[0].dtype if arrays else self.dtype)
        return np.array(parts[0]) if len(parts) == 1 else np.concatenate(parts)

    def read(self, start: int, length: int) -> np.ndarray:
        """Token ids [start, start+length) of the whole dataset (a copy; crosses shard boundaries)."""
        return self._gather(self._tokens, start, length)

    def read_mask(self, start: int, length: int) -> np.ndarray | None:
        """uint8 loss mask over the same range (sft/preference kinds), else None."""
        return self._gather(self._masks, start, length) if self._masks else None

    # --- documents -----------------------------------------------------------------------------

    def doc_bounds(self, i: int) -> tuple[int, int]:
        """(start, end) token offsets of document i."""
        if not 0 <= i < self.n_docs:
            raise IndexError(f"{self.path}: document {i} is outside [0, {self.n_docs})")
        end = int(self.doc_starts[i + 1]) if i + 1 < self.n_docs else self.n_tokens
        return int(self.doc_starts[i]), end

    def doc(self, i: int) -> np.ndarray:
        """Token ids of document i."""
        start, end = self.doc_bounds(i)
        return self.read(start, end - start)

    def doc_mask(self, i: int) -> np.ndarray | None:
        """Loss mask of document i (sft/preference), else None."""
        start, end = self.doc_bounds(i)
        return self.read_mask(start, end - start)

    @cached_property
    def doc_lens(self) -> np.ndarray:
        """int64 [n_docs] token count of every document."""
        return np.diff(np.append(self.doc_starts, self.n_tokens))

    # --- preference pairs ----------------------------------------------------------------------

    @property
    def n_pairs(self) -> int:
        """Number of preference pairs (preference kind)."""
        self._need("preference")
        return self.n_docs // 2

    def pair(self, i: int) -> Pair:
        """Preference pair i: chosen = doc 2i, rejected = doc 2i+1."""
        self._need("preference")
        if not 0 <= i < self.n_pairs:
            raise IndexError(f"{self.path}: pair {i} is outside [0, {self.n_pairs})")
        return Pair(self.doc(2 * i), self.doc_mask(2 * i), self.doc(2 * i + 1), self.doc_mask(2 * i + 1))

    # --- prompts -------------------------------------------------------------------------------

    @cached_property
    def _side_offsets(self) -> np.ndarray:
        """Byte offset of every line of the side file (one scan, then random access)."""
        data = np.fromfile(self.path / self.meta["side_file"], dtype=np.uint8)
        ends = np.flatnonzero(data == ord("\n")) + 1
        if len(ends) != self.n_docs:
            raise ValueError(f"{self.path / self.meta['side_file']}: {len(ends)} lines for {self.n_docs} documents")
        return np.concatenate([[0], ends]).astype(np.int64)

    def side(self, i: int) -> dict:
        """The side-file record of document i (prompt kind: {"answer", "columns"})."""
        self.doc_bounds(i)  # range check
        if "side_file" not in self.meta:
            raise ValueError(f"{self.path}: kind {self.kind!r} has no side file")
        lo, hi = self._side_offsets[i], self._side_offsets[i + 1]
        with open(self.path / self.meta["side_file"], "rb") as f:
            f.seek(int(lo))
            return json.loads(f.read(int(hi - lo)))

    def prompt(self, i: int) -> Prompt:
        """Prompt i: its ids (ending with the generation prompt), answer and other columns."""
        self._need("prompt")
        rec = self.side(i)
        return Prompt(self.doc(i), rec["answer"], rec.get("columns", {}))

    # --- splits --------------------------------------------------------------------------------

    @cached_property
    def val(self) -> "Shards | None":
        """The validation split written by `--val-frac` (sub-folder val/), or None."""
        if not self.meta.get("val"):
            return None
        val = Shards(self.path / self.meta["val"])
        if val.meta.get("parent_run") != self.meta.get("run"):
            raise ValueError(f"{val.path}: belongs to prepare run {val.meta.get('parent_run')}, not {self.meta.get('run')}")
        return val

    def _need(self, kind: str) -> None:
        if self.kind != kind:
            raise ValueError(f"{self.path}: this is a {self.kind!r} dataset, not {kind!r}")

    def __repr__(self) -> str:
        return f"Shards({str(self.path)!r}, kind={self.kind}, n_tokens={self.n_tokens:,}, n_docs={self.n_docs:,})"


def open_shards(path: str | Path) -> Shards:
    """Open a dataset folder written by `scratchlm prepare`."""
    return Shards(path)
