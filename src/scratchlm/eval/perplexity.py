"""Validation perplexity of a model over consecutive windows of prepared shards, next to an add-one unigram
model fitted on the training shards (the floor any language model should beat)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def perplexities(model: Any, train_dir: Path, val_dir: Path, seq_len: int,
                 max_windows: int = 400) -> tuple[float, float]:
    """(model ppl, add-one unigram ppl fitted on the training shards), both over the same predicted
    tokens of consecutive validation windows."""
    import numpy as np
    import torch

    from scratchlm.shards.datasets import open_shards

    train, val = open_shards(train_dir), open_shards(val_dir)
    V = int(model.config.vocab_size)
    counts = np.bincount(np.asarray(train.read(0, train.n_tokens), dtype=np.int64), minlength=V)[:V]
    logp_uni = np.log((counts + 1.0) / (counts.sum() + V))
    n_win = min(max_windows, (val.n_tokens - 1) // seq_len)
    if n_win < 1:
        raise ValueError(f"{val_dir}: {val.n_tokens} tokens, fewer than one window of seq_len {seq_len} + 1")
    device = next(model.parameters()).device
    nll, uni, n = 0.0, 0.0, 0
    for start in range(0, n_win, 16):
        rows = [np.asarray(val.read(w * seq_len, seq_len + 1), dtype=np.int64) for w in range(start, min(n_win, start + 16))]
        ids = torch.from_numpy(np.stack(rows))  # [b, seq_len + 1]
        with torch.no_grad():
            out = model(ids[:, :-1].to(device), targets=ids[:, 1:].to(device))
        k = ids[:, 1:].numel()
        nll += float(out.ce_loss) * k
        uni += -float(logp_uni[ids[:, 1:].numpy()].sum())
        n += k
    return math.exp(nll / n), math.exp(uni / n)


def token_bytes(tokenizer: Any) -> Any:
    """UTF-8 bytes each id stands for [V] (numpy int64): a byte-level BPE piece has one byte per symbol, a
    tag such as <think> its text's bytes, and control tokens (<|im_end|>, ...) none: they are not text."""
    import numpy as np

    hf = tokenizer._tok
    added = hf.get_added_tokens_decoder()
    out = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for i in range(tokenizer.vocab_size):
        if i in added:
            out[i] = 0 if added[i].special else len(added[i].content.encode("utf-8"))
        else:
            out[i] = len(hf.id_to_token(i))  # GPT-2 byte alphabet: one symbol per byte
    return out


def nll_and_bytes(model: Any, tokens: Any, seq_len: int, nbytes: Any, max_windows: int = 400,
                  batch: int = 16) -> dict[str, float]:
    """Summed next-token NLL (nats) over consecutive windows of a token stream, the number of predicted tokens,
    and the UTF-8 bytes they stand for; control tokens count in neither bits-per-byte sum (0 bytes, NLL left out).
    Returns {"nll", "tokens", "bytes", "text_nll", "ppl", "bpb"}: ppl = exp(nll / tokens), bpb = text_nll /
    (ln 2 · bytes), so models with different tokenizers compare on the same text."""
    import numpy as np
    import torch

    tokens = np.asarray(tokens, dtype=np.int64)
    n_win = min(max_windows, (len(tokens) - 1) // seq_len)
    if n_win < 1:
        raise ValueError(f"{len(tokens)} tokens: fewer than one window of seq_len {seq_len} + 1")
    device = next(model.parameters()).device
    nll = text_nll = 0.0
    n_tok = n_bytes = 0
    for start in range(0, n_win, batch):
        rows = np.stack([tokens[w * seq_len: w * seq_len + seq_len + 1] for w in range(start, min(n_win, start + batch))])
        ids = torch.from_numpy(rows)
        with torch.no_grad():
            lp = model.token_logprobs(ids[:, :-1].to(device), ids[:, 1:].to(device)).double().cpu()
        b = torch.from_numpy(nbytes[rows[:, 1:]])
        nll -= float(lp.sum())
        text_nll -= float(lp[b > 0].sum())
        n_tok += lp.numel()
        n_bytes += int(b.sum())
    return {"nll": nll, "tokens": n_tok, "bytes": n_bytes, "text_nll": text_nll,
            "ppl": math.exp(nll / n_tok), "bpb": text_nll / (math.log(2) * n_bytes) if n_bytes else float("nan")}


def ppl_bpb(model: Any, tokenizer: Any, val_dir: Path, seq_len: int, max_windows: int = 400) -> dict[str, float]:
    """Validation perplexity and bits per byte over a prepared shard folder (`scratchlm prepare` output)."""
    from scratchlm.shards.datasets import open_shards

    val = open_shards(val_dir)
    n = min(val.n_tokens, max_windows * seq_len + 1)
    return nll_and_bytes(model, val.read(0, n), seq_len, token_bytes(tokenizer), max_windows)


def stage_val_loss(model: Any, cfg: Any) -> float:
    """Mean loss of `model` on cfg.train.val_data under cfg's stage objective, computed as the training loop's
    validation computes it (same batches): e.g. an SFT run's held-out chat NLL for a model that never ran it."""
    import torch

    from scratchlm.train.loop import validate
    from scratchlm.train.objectives import make_objective

    objective = make_objective(cfg)
    device = next(model.parameters()).device
    objective.setup(objective.info, model)
    was_training = model.training
    result = validate(model, objective, objective.info, device, torch.float32)
    model.train(was_training)
    if result is None:
        raise ValueError(f"stage_val_loss: no validation data in train.val_data={cfg.train.val_data!r}")
    return float(result["loss"])
