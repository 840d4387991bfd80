"""The output processor: what one sampled token does to its sample — log-probs of the model's own distribution,
the stop ids, incremental detokenisation and stop strings (detok.py), the length limits — and the events the
caller sees."""

from __future__ import annotations

import torch

from scratchlm.engine.request import Sample, TokenEvent


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]] | None]:
    """(log-prob of `token`, the `top` most likely (id, log-prob) or None) under logits [V], before any filter."""
    logp = torch.log_softmax(logits, dim=-1)
    lp = float(logp[token])
    if not top:
        return lp, None
    v, ix = logp.topk(top)
    return lp, list(zip(ix.tolist(), v.tolist()))


class OutputProcessor:
    """Applies sampled tokens to their samples; counts the tokens generated."""

    def __init__(self, max_seq_len: int) -> None:
        self.max_seq_len = max_seq_len
        self.generation_tokens_total = 0

    def process(self, s: Sample, tok: int, logits: torch.Tensor) -> tuple[str, str] | None:
        """Apply `tok` (sampled from logits [V]) to sample `s`, emitting its token event; returns (finish reason,
        the last text) when the sample ends here (the caller frees it and emits the finishing event)."""
        p = s.params
        lp = top = None
        if s.logprobs or s.top_logprobs:
            lp, top = token_logprobs(logits, tok, s.top_logprobs)
        self.generation_tokens_total += 1
        if tok in s.stop_ids:
            if p.keep_stop_id:
                s.handle.append_token(s.index, tok)
            return "stop", s.text.flush()
        s.tokens.append(tok)
        if s.seen is not None:
            s.seen[0, tok] = True
        if s.counts is not None:
            s.counts[0, tok] += 1
        s.handle.append_token(s.index, tok)
        delta, stopped = s.text.push(tok)
        if stopped:
            s.handle.cut_tokens(s.index, s.text.ids_before_stop)
            return "stop", delta
        s.handle.emit(TokenEvent(s.index, tok, delta, lp, top))
        if s.n_generated >= p.max_new_tokens or len(s.tokens) >= self.max_seq_len:
            return "length", s.text.flush()
        return None
