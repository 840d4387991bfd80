"""Distributed training: the same command runs on one process or under `torchrun`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; we then start a process group (NCCL on GPU, gloo on
CPU) and wrap the plain model from outside (torchtitan's rule): DDP by default, FSDP2
(`fully_shard`, each block then the root) with `train.parallel=fsdp`. State dicts always go through
torch.distributed.checkpoint's full-state-dict API, so a checkpoint written by N processes loads on
one process (or on M) unchanged.

The loop reaches all of this through one `Backend` object: it wraps the plain model and builds its optimizer,
runs each micro-batch's backward, steps (clipping first), and saves and loads full state dicts. `TorchBackend`
(here) is one process, DDP or FSDP2; `zero.DeepSpeedBackend` is DeepSpeed ZeRO-1/2. The loop never asks which.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator

import torch
import torch.distributed as dist
from torch import nn

from scratchlm.model.transformer import compile_blocks


@dataclass
class DistInfo:
    """Where this process stands: rank, world size, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when a process group is running (world size > 1)."""
        return self.world_size > 1


def setup_distributed(device: torch.device) -> DistInfo:
    """Start the process group when launched by torchrun; otherwise a single-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    """Tear down the process group if we started one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few floats over all processes (one collective; identity on one process)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op on one process)."""
    if info.enabled:
        dist.barrier()


def wrap_model(model: nn.Module, info: DistInfo, parallel: str) -> nn.Module:
    """Apply DDP or FSDP2 to a plain model; returns the module to call in the training step."""
    if not info.enabled:
        return model
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        # shard each repeated block on its own so only one block's full weights exist at a time
        for module in model.modules():
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=device_ids)


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on micro-batches that are not the last of an accumulation."""
    if sync:
        yield
        return
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(model, DDP):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def full_model_state(raw: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict on CPU; a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(raw: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state keyed by parameter name; a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(raw, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(raw: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full, name-keyed optimizer state into a (possibly sharded) optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(raw, optimizer, state, options=StateDictOptions(full_state_dict=True))


class Backend:
    """How the loop trains the plain module `raw` on this process; subclasses fill in wrap, backward and step.

    After `wrap`, `model` is the module to call in the training step and `optimizer` holds the param groups the
    loop sets the lr of. Every method is called on every process (some are collectives)."""

    def __init__(self, info: DistInfo) -> None:
        self.info = info
        self.raw: nn.Module | None = None  # the plain module: state dicts come from here (FSDP2 shards it in place)
        self.model: nn.Module | None = None
        self.optimizer: Any = None

    def wrap(self, raw: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> nn.Module:
        """Wrap the plain model (on its device) for training and build its optimizer; returns the model to call."""
        raise NotImplementedError

    def set_lr(self, lr: float) -> None:
        """This step's learning rate, times each param group's lr_scale."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def micro_batch(self, last: bool) -> ContextManager[None]:
        """Context of one micro-batch's forward and backward; `last` marks the step's last micro-batch."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, n_micro: int) -> None:
        """Accumulate the gradients of one micro-batch's loss (already scaled to its share of the step)."""
        raise NotImplementedError

    def step(self, grad_clip: float) -> Any:
        """Clip (when grad_clip > 0) and step the optimizer, then clear the gradients; the gradient norm or None."""
        raise NotImplementedError

    def model_state(self) -> dict[str, torch.Tensor]:
        """The full model state dict on CPU (a collective under FSDP)."""
        return full_model_state(self.raw)

    def optimizer_state(self) -> dict[str, Any]:
        """The full optimizer state keyed by parameter name, as checkpoints hold it (a collective)."""
        raise NotImplementedError

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Load a full, name-keyed optimizer state (from a checkpoint written by any backend)."""
        raise NotImplementedError

    def full_model(self, plain_from: Callable[[dict[str, torch.Tensor]], nn.Module]) -> nn.Module | None:
        """The trained model as a plain module on the main process (None elsewhere when the weights are sharded):
        sharded (FSDP2) weights are gathered on every process and `plain_from(full state)` builds it."""
        if not any(type(p).__name__ == "DTensor" for p in self.raw.parameters()):
            return self.raw
        if not self.info.is_main:
            full_model_state(self.raw)  # matches the main process's collective
            return None
        return plain_from(full_model_state(self.raw))


class TorchBackend(Backend):
    """One process, DDP or FSDP2 (`parallel`), blocks optionally compiled: the optimizer steps after our clipping."""

    def __init__(self, info: DistInfo, parallel: str, compile: bool = False) -> None:
        super().__init__(info)
        self.parallel, self.compile = parallel, compile

    def wrap(self, raw: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> nn.Module:
        self.raw = raw
        if self.compile:
            # Per block, before wrapping (as torchtitan does for FSDP2): the data-dependent parts of a step (packed
            # document masks, counted targets, rollouts) stay eager and every objective gets the same graphs.
            compile_blocks(raw)
        model = wrap_model(raw, self.info, self.parallel)
        self.model, self.optimizer = model, make_optimizer(raw)
        return model

    def micro_batch(self, last: bool) -> ContextManager[None]:
        return no_grad_sync(self.model, last)  # gradients are all-reduced once, at the last micro-batch

    def backward(self, loss: torch.Tensor, n_micro: int) -> None:
        loss.backward()

    def step(self, grad_clip: float) -> Any:
        grad_norm = None
        if grad_clip > 0:
            grad_norm = nn.utils.clip_grad_norm_(self.raw.parameters(), grad_clip)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def optimizer_state(self) -> dict[str, Any]:
        return full_optimizer_state(self.raw, self.optimizer)

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        load_optimizer_state(self.raw, self.optimizer, state)
