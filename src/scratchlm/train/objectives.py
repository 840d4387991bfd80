"""Objectives: one small class per training stage. Each turns data into (loss, metrics); the loop
(train/loop.py) owns everything else.

An objective owns its data: `next_batches()` returns this process's micro-batches for one optimizer
step and advances a *global* data position (so a checkpoint resumes on any number of processes),
`state_dict()` saves that position. `prepare_model` applies LoRA for any stage (the [lora] section) and lets a
stage add heads (the reward model); `frozen_models()` are extra models a stage holds (DPO's reference), which
the loop places on the device. The preference stages (train/reward_objective.py, train/dpo.py) build on `PairObjective`.
Rollout stages (PPO/GRPO) generate with `self.policy` (the model being trained, given to `setup`) inside
`next_batches`; a batch may carry non-tensor fields (texts, answers), which `to_device` leaves where they are.
`evaluate` returns a stage's own validation metrics beside its loss (logged as val_<name>).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn

from scratchlm.config import Config, ConfigError
from scratchlm.train.distributed import DistInfo

Batch = dict[str, Any]  # tensors (moved to the device by the loop) and plain fields (texts, answers: left as they are)
IGNORE = -100  # target id the model's cross-entropy skips


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with its tensors on `device`; non-tensor fields unchanged."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Objective:
    """Base class: the interface the loop drives. Subclasses fill in data and loss."""

    name = "base"

    val_is_nll = True  # the validation loss is a next-token NLL (the loop also logs its perplexity)
    fsdp = True  # runs under train.parallel=fsdp on several processes (the rollout stages do not: train/rollout.py)

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.info = DistInfo()
        self.policy: nn.Module | None = None

    def setup(self, info: DistInfo, policy: nn.Module | None = None) -> None:
        """Called by the loop once the process group and device are known, with the model being trained (the
        plain module, on its device): rollout stages generate with it inside `next_batches`."""
        self.info = info
        self.policy = policy

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Wrap or freeze the model before the optimizer is built: LoRA adapters when lora.rank ≥ 1 (every
        stage), and whatever a stage adds on top (value heads...) in its override."""
        lc = self.cfg.lora
        if lc.rank > 0:
            from scratchlm.model.lora import apply_lora

            apply_lora(model, lc.rank, lc.alpha, lc.dropout, lc.targets)
        return model

    def frozen_models(self) -> list[nn.Module]:
        """Extra models the stage holds (reference, teacher, reward): the loop moves them to the device; they
        stay in eval mode without grad."""
        return []

    def next_batches(self) -> list[Batch]:
        """This process's grad_accum micro-batches for the next optimizer step (CPU tensors)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss to backprop, metrics as plain floats) for one micro-batch."""
        raise NotImplementedError

    def val_batches(self) -> Iterator[Batch]:
        """This process's share of the fixed validation batches (empty when there is no val data)."""
        return iter(())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: Batch) -> tuple[float, int, dict[str, float]]:
        """(summed loss, number of items it sums over, other metrics summed over the same items) on one
        validation batch; the loop logs each mean as val_<name>. Here: next-token NLL over predicted tokens."""
        out = _forward(model, batch)
        count = int((batch["targets"] != IGNORE).sum())
        return float(out.ce_loss.detach()) * count, count, {}

    def weight(self, batch: Batch) -> float:
        """How much this micro-batch counts in the step's mean loss: its number of counted targets."""
        return float((batch["targets"] != IGNORE).sum())

    def tokens(self, batch: Batch) -> int:
        """Tokens the model processes for this batch (for tokens/s)."""
        return int(batch["input_ids"].numel())

    def save_final(self, run_dir: Path, model: nn.Module, cfg: Config, tokenizer_dir: str | Path | None) -> None:
        """Write the finished run folder from the trained module, as `load_run` opens it. A stage that trains more
        than the model it hands on (PPO's critic) writes the rest beside it."""
        from scratchlm.runs import save_run

        save_run(run_dir, model, cfg, tokenizer_dir)

    def state_dict(self) -> dict[str, Any]:
        """The data position (JSON-able; tensors, such as a kept rollout batch, go to the checkpoint's objective.pt)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the data position saved by `state_dict`."""


def _open(path: str, field: str) -> Any:
    from scratchlm.shards.datasets import open_shards

    if not path:
        raise ConfigError(f"{field} is empty: point it at a prepared shard folder (scratchlm prepare --out DIR), "
                          f"e.g. --data DIR or --set {field}=DIR")
    if not Path(path).exists():
        raise FileNotFoundError(f"{field}={path!r}: no such folder (prepare it with `scratchlm prepare`)")
    return open_shards(path)


def _val_path(cfg: Config) -> str:
    """train.val_data, else the `val/` sub-dataset that `scratchlm prepare --val-frac` writes."""
    if cfg.train.val_data:
        return cfg.train.val_data
    cand = Path(cfg.train.data) / "val"
    return str(cand) if (cand / "meta.json").exists() else ""


def _forward(model: nn.Module, batch: Batch, full_logits: bool = False) -> Any:
    """The model on a batch: packed batches carry doc_ids, which keep documents from seeing each other; the
    output head runs only where a target counts unless full_logits."""
    return model(batch["input_ids"], targets=batch["targets"], doc_ids=batch.get("doc_ids"), full_logits=full_logits)


def token_logprobs(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p of each target [B, T] (0 where targets is IGNORE) through the model's `forward`, so that it holds on a
    plain model and on one wrapped for training: DDP prepares its gradient all-reduce in forward (and forwards no
    other attribute), FSDP2 gathers sharded weights around forward, DeepSpeed and torch.compile run forward. The
    objectives call this, never `model.token_logprobs`, on the model the loop hands them."""
    return model(input_ids, targets=targets, per_token=True)


def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order items are visited in during one epoch: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


class Row(NamedTuple):
    """T+1 tokens of one training row, with the SFT loss mask and per-token document ids (None = absent)."""

    ids: np.ndarray
    mask: np.ndarray | None
    docs: np.ndarray | None


class PackedWindows:
    """Fixed-length windows of seq_len+1 tokens cut from the concatenated token stream, visited in a
    fresh seeded permutation every epoch: window `pos` of the global order is a pure function of
    (seed, pos), which is what makes resume exact."""

    def __init__(self, shards: Any, seq_len: int, seed: int, shuffle: bool = True, where: str = "data") -> None:
        self.shards, self.seq_len, self.seed, self.shuffle = shards, seq_len, seed, shuffle
        self.n = (int(shards.n_tokens) - 1) // seq_len
        if self.n < 1:
            raise ConfigError(f"{where}: {shards.n_tokens} tokens is fewer than train.seq_len+1={seq_len + 1}; "
                              f"lower train.seq_len or prepare more data")
        self._epoch, self._perm = -1, np.arange(0)

    def window(self, pos: int) -> int:
        """Index of the window at global position `pos`."""
        epoch, i = divmod(pos, self.n)
        if not self.shuffle:
            return i
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, _epoch_order(self.n, self.seed, epoch, True)
        return int(self._perm[i])

    def get(self, pos: int) -> Row:
        """The window at global position `pos`: T+1 tokens, their document ids from the shards' index."""
        start = self.window(pos) * self.seq_len
        ids = np.asarray(self.shards.read(start, self.seq_len + 1), dtype=np.int64)
        mask = self.shards.read_mask(start, self.seq_len + 1)
        starts = getattr(self.shards, "doc_starts", None)
        docs = None
        if starts is not None and len(starts):
            docs = np.searchsorted(starts, np.arange(start, start + len(ids)), side="right") - 1
        return Row(ids, None if mask is None else np.asarray(mask), docs)


def _xy(row: Row, use_mask: bool, use_docs: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Inputs, shifted targets and the inputs' document ids (None unless use_docs). Targets become IGNORE
    where the mask is 0, and, with use_docs, where the next token starts another document."""
    x, y = row.ids[:-1], row.ids[1:].copy()
    if use_mask and row.mask is not None:
        y[row.mask[1:] == 0] = IGNORE  # the mask marks tokens to *predict*, so it shifts with the targets
    docs = None
    if use_docs and row.docs is not None:
        docs = row.docs[:-1]
        y[row.docs[1:] != docs] = IGNORE  # another document's first token is not predictable from this one
    return x, y, docs


class Pretrain(Objective):
    """Next-token prediction over packed windows of the token shards."""

    name = "pretrain"
    use_mask = False

    def __init__(self, cfg: Config, shards: Any = None, val_shards: Any = None) -> None:
        super().__init__(cfg)
        tc = cfg.train
        self.shards = shards if shards is not None else _open(tc.data, "train.data")
        self._check_vocab(self.shards, tc.data or "data")
        if val_shards is None and shards is None and _val_path(cfg):
            val_shards = _open(_val_path(cfg), "train.val_data")
        self.val_shards = val_shards
        self.position = 0  # windows consumed, counted over all processes
        self.windows = self._make_windows(self.shards, shuffle=True, where=tc.data or "data")

    def _make_windows(self, shards: Any, shuffle: bool, where: str) -> Any:
        return PackedWindows(shards, self.cfg.train.seq_len, self.cfg.train.seed, shuffle, where)

    def _use_docs(self) -> bool:
        """Whether rows carry document ids (so documents packed into one row never see each other)."""
        return self.cfg.train.doc_mask

    def _check_vocab(self, shards: Any, where: str) -> None:
        vocab = int(getattr(shards, "meta", {}).get("vocab_size", 0) or 0)
        if vocab > self.cfg.model.vocab_size:
            raise ConfigError(f"{where}: tokens come from a {vocab}-token vocabulary but "
                              f"model.vocab_size={self.cfg.model.vocab_size}; set --set model.vocab_size={vocab}")

    def _row(self, pos: int) -> Row:
        """The training row at global position `pos`."""
        return self.windows.get(pos)

    def _build(self, source_rows: list[Row]) -> Batch:
        """These rows as a batch, right-padded to the longest (padding is never a target)."""
        rows = [_xy(row, self.use_mask, self._use_docs()) for row in source_rows]
        T = max(len(x) for x, _, _ in rows)
        x = np.zeros((len(rows), T), dtype=np.int64)  # pad id is irrelevant: padded targets are ignored
        y = np.full((len(rows), T), IGNORE, dtype=np.int64)
        docs = np.full((len(rows), T), -1, dtype=np.int64)  # padding is a document of its own
        for r, (xr, yr, dr) in enumerate(rows):
            x[r, : len(xr)], y[r, : len(yr)] = xr, yr
            if dr is not None:
                docs[r, : len(dr)] = dr
        batch = {"input_ids": torch.from_numpy(x), "targets": torch.from_numpy(y)}
        if any(dr is not None for _, _, dr in rows):
            batch["doc_ids"] = torch.from_numpy(docs)
        return batch

    def next_batches(self) -> list[Batch]:
        """grad_accum micro-batches; micro m of rank r takes global slots (m·world + r)·B ... + B."""
        tc, world, rank = self.cfg.train, self.info.world_size, self.info.rank
        B = tc.batch_size
        out = []
        for m in range(tc.grad_accum):
            first = self.position + (m * world + rank) * B
            out.append(self._build([self._row(pos) for pos in range(first, first + B)]))
        self.position += B * tc.grad_accum * world
        return out

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The model's loss (CE + weighted MTP + MoE aux) with the parts as metrics."""
        out = _forward(model, batch)
        return out.loss, _parts(out)

    def val_batches(self) -> Iterator[Batch]:
        """Sequential (unshuffled) windows of the validation split; batch k goes to rank k % world."""
        if self.val_shards is None:
            return
        tc = self.cfg.train
        windows = self._make_windows(self.val_shards, shuffle=False, where=_val_path(self.cfg) or "val data")
        n_batches = min(tc.eval_batches * self.info.world_size, windows.n // tc.batch_size)
        n_batches -= n_batches % self.info.world_size  # every rank runs the same number of forwards
        for k in range(self.info.rank, n_batches, self.info.world_size):
            yield self._build([windows.get(pos) for pos in range(k * tc.batch_size, (k + 1) * tc.batch_size)])

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "seed": self.cfg.train.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


OPEN_ROWS = 8  # rows first-fit packing keeps open: 8 fill the demo's 129-token rows to 91% (greedy in order: 83%)


def first_fit_rows(order: np.ndarray, lens: np.ndarray, capacity: int, open_rows: int = OPEN_ROWS) -> list[np.ndarray]:
    """Documents (visited in `order`, lengths `lens` ≤ capacity) laid into rows of `capacity` tokens: each goes
    into the first of the last `open_rows` rows with room, else starts a row; the oldest open row is closed when
    there are more. Fewer wasted positions than starting a new row whenever the next document does not fit,
    and still a pure function of the order (so of the seed and epoch)."""
    done: list[list[int]] = []
    rows: list[list[int]] = []  # open rows' documents
    room: list[int] = []  # their free tokens
    for d in order.tolist():
        n = int(lens[d])
        for k, free in enumerate(room):
            if n <= free:
                rows[k].append(d)
                room[k] -= n
                break
        else:
            rows.append([d])
            room.append(capacity - n)
            if len(rows) > open_rows:
                done.append(rows.pop(0))
                room.pop(0)
    done += rows
    return [np.asarray(r, dtype=np.int64) for r in done]


class PackedDocs:
    """Whole conversations (each truncated to seq_len+1 tokens) in a seeded permutation per epoch, laid
    into rows: one conversation per row (pack=False), or several whole conversations per row of seq_len+1
    tokens by first-fit packing (pack=True; no conversation is ever split across rows). Row `pos` of the
    global order is a pure function of (seed, pos), which keeps resume exact."""

    def __init__(self, shards: Any, seq_len: int, seed: int, shuffle: bool = True, where: str = "data",
                 pack: bool = True) -> None:
        self.shards, self.seq_len, self.seed, self.shuffle, self.pack = shards, seq_len, seed, shuffle, pack
        starts = np.asarray(shards.doc_starts, dtype=np.int64)
        if len(starts) == 0:
            raise ConfigError(f"{where}: the dataset has no documents")
        self.starts = starts
        self.lens = np.minimum(np.append(starts[1:], int(shards.n_tokens)) - starts, seq_len + 1)
        self._counts: dict[tuple[int, bool], int] = {}  # (epoch, shuffle) → rows in that epoch
        self._cached: tuple[tuple[int, bool], list[np.ndarray]] | None = None  # one epoch's rows

    @property
    def n(self) -> int:
        """Rows in the first epoch (packed epochs differ slightly in length)."""
        return self._count(0)

    def _count(self, epoch: int) -> int:
        key = (epoch, self.shuffle)
        if key not in self._counts:
            self._counts[key] = len(self._rows(epoch))
        return self._counts[key]

    def _rows(self, epoch: int) -> list[np.ndarray]:
        """Document indices of every row of one epoch (the last epoch asked for is kept)."""
        key = (epoch, self.shuffle)
        if self._cached is None or self._cached[0] != key:
            order = _epoch_order(len(self.starts), self.seed, epoch, self.shuffle)
            if not self.pack:
                rows = [order[i:i + 1] for i in range(len(order))]
            else:
                rows = first_fit_rows(order, self.lens, self.seq_len + 1)
            self._cached = (key, rows)
            self._counts[key] = len(rows)
        return self._cached[1]

    def _locate(self, pos: int) -> np.ndarray:
        epoch = 0
        while pos >= self._count(epoch):  # counts are kept for every epoch, rows for the current one
            pos -= self._count(epoch)
            epoch += 1
        return self._rows(epoch)[pos]

    def get(self, pos: int) -> Row:
        """The row at global position `pos`: its conversations back to back, each with its own doc id."""
        parts, masks, docs = [], [], []
        for d in self._locate(pos):
            start, length = int(self.starts[d]), int(self.lens[d])
            parts.append(np.asarray(self.shards.read(start, length), dtype=np.int64))
            m = self.shards.read_mask(start, length)
            masks.append(None if m is None else np.asarray(m))
            docs.append(np.full(length, d, dtype=np.int64))
        mask = None if any(m is None for m in masks) else np.concatenate(masks)
        return Row(np.concatenate(parts), mask, np.concatenate(docs))


def mix_slot(g: int, share: float) -> tuple[bool, int]:
    """(is a pretraining row, index in its own stream) of global row slot g when `share` of the rows are
    pretraining rows: slot g is one when floor((g+1)·share) > floor(g·share), so every run of slots holds
    the share to within one row, and the position alone (no state) says which row comes, as resume needs."""
    before = math.floor(g * share)  # pretraining rows in slots 0..g-1
    if math.floor((g + 1) * share) > before:
        return True, before
    return False, g - before


class SFT(Pretrain):
    """Supervised fine-tuning on ChatML conversations: loss on assistant tokens only (the shards'
    mask); whole conversations packed into rows (train.packing=true, with train.doc_mask keeping them
    from attending to each other) or one padded conversation per row. With train.pretrain_mix > 0, that
    share of the rows are windows of pretraining shards (loss on every token): the model keeps its corpus."""

    name = "sft"
    use_mask = True

    def __init__(self, cfg: Config, shards: Any = None, val_shards: Any = None, mix_shards: Any = None) -> None:
        super().__init__(cfg, shards, val_shards)
        tc = cfg.train
        kind = getattr(self.shards, "kind", "sft")
        if kind != "sft":
            raise ConfigError(f"train.data={tc.data!r} holds {kind!r} shards; SFT needs "
                              f"`scratchlm prepare --kind sft`")
        self.mix: PackedWindows | None = None
        if tc.pretrain_mix > 0:
            if mix_shards is None:
                if not tc.pretrain_mix_data:
                    raise ConfigError(f"train.pretrain_mix={tc.pretrain_mix} needs train.pretrain_mix_data: a folder "
                                      "of pretraining shards (`scratchlm prepare --kind pretrain --out DIR`)")
                mix_shards = _open(tc.pretrain_mix_data, "train.pretrain_mix_data")
            mix_kind = getattr(mix_shards, "kind", "pretrain")
            if mix_kind != "pretrain":
                raise ConfigError(f"train.pretrain_mix_data={tc.pretrain_mix_data!r} holds {mix_kind!r} shards; "
                                  "the mix needs `scratchlm prepare --kind pretrain`")
            self._check_vocab(mix_shards, tc.pretrain_mix_data or "pretrain_mix_data")
            # Its own seed stream: the SFT rows' order is the same with or without the mix.
            self.mix = PackedWindows(mix_shards, tc.seq_len, tc.seed + 1, True, tc.pretrain_mix_data or "mix data")

    def _row(self, pos: int) -> Row:
        if self.mix is None:
            return self.windows.get(pos)
        is_pretrain, i = mix_slot(pos, self.cfg.train.pretrain_mix)
        if not is_pretrain:
            return self.windows.get(i)
        # A plain causal window across document boundaries (no mask, no doc ids): the way the demo pretrains and
        # the way perplexity is measured; in a packed batch the whole row is one document of its own.
        return Row(self.mix.get(i).ids, None, None)

    def _make_windows(self, shards: Any, shuffle: bool, where: str) -> Any:
        tc = self.cfg.train
        return PackedDocs(shards, tc.seq_len, tc.seed, shuffle, where, pack=tc.packing)

    def _use_docs(self) -> bool:
        # One conversation per row needs no document mask: causal attention never reaches right padding.
        return self.cfg.train.doc_mask and self.cfg.train.packing

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked next-token loss; a micro-batch without any assistant token contributes zero."""
        out = _forward(model, batch)
        n = int((batch["targets"] != IGNORE).sum())
        if n == 0:  # 0/0 in the mean would be NaN; keep the graph so DDP still syncs
            return out.logits.sum() * 0.0, {"assistant_tokens": 0.0}
        return out.loss, dict(_parts(out), assistant_tokens=float(n))


class PairObjective(Objective):
    """Base of the preference stages (reward model, DPO): micro-batches of train.batch_size pairs from
    `scratchlm prepare --kind preference` shards, in a seeded permutation per epoch; each micro-batch counts
    by its number of pairs. Subclasses turn pair indices into tensors (`build`) and define the loss."""

    val_is_nll = False  # a preference loss, not a next-token NLL

    def __init__(self, cfg: Config, shards: Any = None, val_shards: Any = None) -> None:
        super().__init__(cfg)
        tc = cfg.train
        self.shards = shards if shards is not None else _open(tc.data, "train.data")
        kind = getattr(self.shards, "kind", "preference")
        if kind != "preference":
            raise ConfigError(f"train.data={tc.data!r} holds {kind!r} shards; {self.name} needs "
                              "`scratchlm prepare --kind preference`")
        if val_shards is None and shards is None and _val_path(cfg):
            val_shards = _open(_val_path(cfg), "train.val_data")
        self.val_shards = val_shards
        self.position = 0  # pairs consumed, counted over all processes
        self._perm: tuple[int, np.ndarray] = (-1, np.arange(0))

    def build(self, shards: Any, indices: list[int]) -> Batch:
        """The batch of these pairs (chosen rows first, then rejected)."""
        raise NotImplementedError

    def _pair_at(self, pos: int) -> int:
        epoch, i = divmod(pos, self.shards.n_pairs)
        if self._perm[0] != epoch:
            self._perm = (epoch, _epoch_order(self.shards.n_pairs, self.cfg.train.seed, epoch, True))
        return int(self._perm[1][i])

    def next_batches(self) -> list[Batch]:
        tc, world, rank = self.cfg.train, self.info.world_size, self.info.rank
        B, out = tc.batch_size, []
        for m in range(tc.grad_accum):
            first = self.position + (m * world + rank) * B
            out.append(self.build(self.shards, [self._pair_at(p) for p in range(first, first + B)]))
        self.position += B * tc.grad_accum * world
        return out

    def val_batches(self) -> Iterator[Batch]:
        """The first pairs of the validation split, in order; batch k goes to rank k % world."""
        if self.val_shards is None:
            return
        tc = self.cfg.train
        n = min(tc.eval_batches * self.info.world_size, self.val_shards.n_pairs // tc.batch_size)
        n -= n % self.info.world_size
        for k in range(self.info.rank, n, self.info.world_size):
            yield self.build(self.val_shards, list(range(k * tc.batch_size, (k + 1) * tc.batch_size)))

    def weight(self, batch: Batch) -> float:
        return float(batch["input_ids"].shape[0] // 2)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def _parts(out: Any) -> dict[str, float]:
    m = {"ce_loss": float(out.ce_loss.detach())}
    if getattr(out, "mtp_loss", None) is not None:
        m["mtp_loss"] = float(out.mtp_loss.detach())
    aux = getattr(out, "aux_loss", None)
    if aux is not None and float(aux.detach()) != 0.0:
        m["aux_loss"] = float(aux.detach())
    return m


def make_objective(cfg: Config) -> Objective:
    """The objective of the stage named by train.objective (scratchlm/stages.py registers them)."""
    from scratchlm.stages import objective_for

    return objective_for(cfg.train.objective, cfg)


NAN_ENV = "SCRATCHLM_TEST_NAN_STEP"  # test hook read by the loop: poison the loss at this step


def nan_step() -> int | None:
    """The optimizer step (1-based) whose loss the NaN test hook poisons, if set."""
    v = os.environ.get(NAN_ENV)
    return int(v) if v else None
