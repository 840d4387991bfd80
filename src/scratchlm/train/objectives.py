"""Objectives: one small class per training stage. Each turns data into (loss, metrics); the loop
(train/loop.py) owns everything else.

An objective owns its data: `next_batches()` returns this process's micro-batches for one optimizer
step and advances a *global* data position (so a checkpoint resumes on any number of processes),
`state_dict()` saves that position. `prepare_model` applies LoRA for any stage (the [lora] section) and lets a
stage add heads (the reward model); `frozen_models()` are extra models a stage holds (DPO's reference), which
the loop places on the device. The preference stages (train/reward_objective.py, train/dpo.py) build on `PairObjective`.
Rollout stages (PPO/GRPO) generate with `self.policy` (the model being trained, given to `setup`) inside
`next_batches`; a batch may carry non-tensor fields (texts, answers), which `to_device` leaves where they are.
Where rows come from (shard folders, epoch order, packing, padding into batches) is train/batches.py.
`evaluate` returns a stage's own validation metrics beside its loss (logged as val_<name>).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from scratchlm.config import Config, ConfigError
from scratchlm.train.batches import (IGNORE, Batch, PackedDocs, PackedWindows, Row, epoch_order, mix_slot, open_data,
                                     rows_batch, val_data_path)
from scratchlm.train.distributed import DistInfo


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


class Pretrain(Objective):
    """Next-token prediction over packed windows of the token shards."""

    name = "pretrain"
    use_mask = False

    def __init__(self, cfg: Config, shards: Any = None, val_shards: Any = None) -> None:
        super().__init__(cfg)
        tc = cfg.train
        self.shards = shards if shards is not None else open_data(tc.data, "train.data")
        self._check_vocab(self.shards, tc.data or "data")
        if val_shards is None and shards is None and val_data_path(cfg):
            val_shards = open_data(val_data_path(cfg), "train.val_data")
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
        return rows_batch(source_rows, self.use_mask, self._use_docs())

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
        windows = self._make_windows(self.val_shards, shuffle=False, where=val_data_path(self.cfg) or "val data")
        n_batches = min(tc.eval_batches * self.info.world_size, windows.n // tc.batch_size)
        n_batches -= n_batches % self.info.world_size  # every rank runs the same number of forwards
        for k in range(self.info.rank, n_batches, self.info.world_size):
            yield self._build([windows.get(pos) for pos in range(k * tc.batch_size, (k + 1) * tc.batch_size)])

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "seed": self.cfg.train.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


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
                mix_shards = open_data(tc.pretrain_mix_data, "train.pretrain_mix_data")
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
        self.shards = shards if shards is not None else open_data(tc.data, "train.data")
        kind = getattr(self.shards, "kind", "preference")
        if kind != "preference":
            raise ConfigError(f"train.data={tc.data!r} holds {kind!r} shards; {self.name} needs "
                              "`scratchlm prepare --kind preference`")
        if val_shards is None and shards is None and val_data_path(cfg):
            val_shards = open_data(val_data_path(cfg), "train.val_data")
        self.val_shards = val_shards
        self.position = 0  # pairs consumed, counted over all processes
        self._perm: tuple[int, np.ndarray] = (-1, np.arange(0))

    def build(self, shards: Any, indices: list[int]) -> Batch:
        """The batch of these pairs (chosen rows first, then rejected)."""
        raise NotImplementedError

    def _pair_at(self, pos: int) -> int:
        epoch, i = divmod(pos, self.shards.n_pairs)
        if self._perm[0] != epoch:
            self._perm = (epoch, epoch_order(self.shards.n_pairs, self.cfg.train.seed, epoch, True))
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
