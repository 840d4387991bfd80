"""The model runner: the paged KV memory, the model inputs of one forward (right-padded ids, the paged batch
view of the block tables) and the forward itself — eager, or for decode the compiled step with frozen weights
(`compile_frozen`)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from scratchlm.engine.paged_cache import PagedKVCache
from scratchlm.engine.request import Sample


def compile_frozen(model: torch.nn.Module) -> Callable[..., Any]:
    """`model` under torch.compile with its weights folded into the graph as constants (inductor's freezing).

    Freezing is what makes a small-batch decode step fast on a CPU: linear weights are repacked once for
    oneDNN's GEMM, and the small ops between the matmuls fuse into a few C++ kernels (with `cpp_wrapper`, called
    from C++ rather than Python). The price: the graph keeps the weights of the moment it compiled, so the model
    must not be trained afterwards (LLMEngine checks); shapes are dynamic, so batch size and context length
    changes do not recompile.
    """
    from torch._inductor import config as inductor_config

    settings = {"freezing": True, "cpp_wrapper": next(model.parameters()).device.type == "cpu"}
    compiled = torch.compile(model, dynamic=True)

    def forward(*args, **kwargs):
        # Set around every call, not passed as torch.compile(options=...): compiling happens at a call, and
        # freezing given as an option did not take effect (measured: 88 vs 103 tok/s, minimind-26m, batch 1).
        with inductor_config.patch(settings):
            return compiled(*args, **kwargs)

    return forward


def _weights_version(model: torch.nn.Module) -> int:
    """Sum of the parameters' in-place write counters: changes when an optimizer (or a load) writes a weight."""
    return sum(p._version for p in model.parameters())


class ModelRunner:
    """Runs the model over the paged KV cache: a prefill of samples' uncached tokens, or one decode token each."""

    def __init__(self, model: torch.nn.Module, num_blocks: int, block_size: int, compile: bool = False,
                 kv_cache_dtype: str = "auto") -> None:
        p = next(model.parameters())
        self.model, self.device = model, p.device
        self.block_size = block_size
        self.kv = PagedKVCache(model.config, num_blocks, block_size, p.device, p.dtype, kv_cache_dtype)
        # The decode forward: the model itself, or its compiled and frozen form (serving a model nobody trains).
        self.compiled = compile
        self._decode_model = compile_frozen(model) if compile else model
        self._frozen_version = _weights_version(model) if compile else 0

    def prefill(self, samples: Sequence[Sample]) -> torch.Tensor:
        """Keys/values of each sample's tokens past its cached prefix (its whole output too after a preemption) in
        one right-padded forward → each row's last real position's logits [B, V]."""
        news = [s.tokens[s.table.cached:] for s in samples]
        T = max(len(n) for n in news)
        view = self.kv.batch([s.table.blocks for s in samples], [s.table.cached for s in samples],
                             [len(n) for n in news])
        ids = torch.tensor([n + [0] * (T - len(n)) for n in news], dtype=torch.long, device=self.device)  # [B, T]
        out = self.model(ids, cache=view).logits  # [B, T, V]
        last = torch.tensor([len(n) - 1 for n in news], device=self.device)
        return out[torch.arange(len(samples), device=self.device), last].float()  # [B, V]

    def decode(self, samples: Sequence[Sample]) -> torch.Tensor:
        """Each sample's last token (the one not yet cached) through the decode step → logits [B, V]."""
        view = self.kv.batch([s.table.blocks for s in samples], [s.table.cached for s in samples],
                             [1] * len(samples))
        ids = torch.tensor([[s.tokens[-1]] for s in samples], dtype=torch.long, device=self.device)
        if self.compiled and _weights_version(self.model) != self._frozen_version:
            raise RuntimeError("LLMEngine(compile=True) froze the model's weights into its compiled decode step and "
                               "they have changed since (training?): build a new engine, or use compile=False")
        return self._decode_model(ids, cache=view).logits[:, -1, :].float()  # [B, V]

    def warmup(self, num_blocks: int, max_seq_len: int) -> None:
        """Compile the decode step for each shape it meets — one sequence on consecutive blocks (no mask), one on
        scattered blocks, several sequences — writing into free blocks, which nothing reads before a prefill
        overwrites them."""
        bs, nb = self.block_size, num_blocks
        cached = min(2 * bs, max_seq_len - 1)  # tokens already cached: past one block when it can be
        n = -(-(cached + 1) // bs)  # blocks per sequence
        one = list(range(n))
        for tables in ([one], [one[::-1]], [one, [(b + n) % nb for b in one]]):
            view = self.kv.batch(tables, [cached] * len(tables), [1] * len(tables))
            ids = torch.zeros(len(tables), 1, dtype=torch.long, device=self.device)
            self._decode_model(ids, cache=view)
