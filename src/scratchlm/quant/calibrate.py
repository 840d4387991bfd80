"""Calibration: the statistics of each linear's input over real text, which SmoothQuant and AWQ choose their
per-channel scales from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass
class InputStats:
    """What one linear saw at its input over the calibration text, per input channel."""

    abs_max: torch.Tensor  # [in] max |x_j| (SmoothQuant)
    abs_mean: torch.Tensor  # [in] mean |x_j| (AWQ's salience)
    rows: torch.Tensor  # [R, in] a sample of input rows (AWQ's search measures its error on them)


def calibration_ids(tokenizer: Any, n_tokens: int, texts: Sequence[str] | None = None) -> list[int]:
    """The first n_tokens of `texts` (default: the built-in corpus' train split), documents joined by end-of-text."""
    if texts is None:
        from scratchlm.data.corpus import corpus_texts

        texts = corpus_texts("train")
    out: list[int] = []
    for text in texts:
        out += tokenizer.encode(text) + [tokenizer.eos_id]
        if len(out) >= n_tokens:
            break
    return out[:n_tokens]


@torch.no_grad()
def input_stats(model: torch.nn.Module, ids: list[int], names: Sequence[str], seq_len: int = 256,
                keep_rows: int = 512) -> dict[str, InputStats]:
    """Run the float model over `ids` (windows of seq_len) and gather each named linear's InputStats."""
    if len(ids) < 2:
        raise ValueError(f"calibration text of {len(ids)} tokens: too short to calibrate on")
    acc: dict[str, dict[str, Any]] = {n: {"max": None, "sum": None, "count": 0, "rows": []} for n in names}
    hooks = []
    seq_len = min(seq_len, model.config.max_seq_len)

    def hook(name: str):
        def fn(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # [N, in]
            a = acc[name]
            m, s = x.abs().amax(0), x.abs().sum(0)
            a["max"] = m if a["max"] is None else torch.maximum(a["max"], m)
            a["sum"] = s if a["sum"] is None else a["sum"] + s
            a["count"] += x.shape[0]
            if sum(r.shape[0] for r in a["rows"]) < keep_rows:
                a["rows"].append(x[: keep_rows])
        return fn

    for n in names:
        layer, _, leaf = n.rpartition(".")
        norm = {"wq": "attn_norm", "wk": "attn_norm", "wv": "attn_norm", "w1": "ffn_norm", "w3": "ffn_norm"}.get(leaf)
        if norm and n.startswith("layers."):
            # The linears fed by a norm may run fused (one matmul over their concatenated weights, model/layers.py),
            # never calling the module: their input is the norm's output, taken there.
            block = model.get_submodule(layer.rpartition(".")[0])
            fn = hook(n)
            hooks.append(getattr(block, norm).register_forward_hook(lambda m, args, out, fn=fn: fn(m, (out,))))
        else:
            hooks.append(model.get_submodule(n).register_forward_pre_hook(hook(n)))
    try:
        for start in range(0, len(ids), seq_len):
            window = ids[start: start + seq_len]
            model(torch.tensor([window], device=model.embed.weight.device))
    finally:
        for h in hooks:
            h.remove()
    return {n: InputStats(a["max"], a["sum"] / a["count"], torch.cat(a["rows"])[:keep_rows]) for n, a in acc.items()}
