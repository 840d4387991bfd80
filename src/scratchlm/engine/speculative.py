"""Speculative decoding (Leviathan et al. 2023): a small draft model proposes, the target verifies, on two
contiguous KV caches (one prompt at a time; apart from the paged engine)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scratchlm.engine.request import check_context
from scratchlm.engine.sampling import SamplingParams, make_generator, process_logits


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@dataclass
class SpeculativeResult:
    """Tokens from `speculative_generate` and how many of the draft's proposals the target accepted."""

    tokens: list[int]
    proposed: int
    accepted: int
    target_forwards: int

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens (0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0


def _feed(model: torch.nn.Module, cache, tokens: list[int], device: torch.device) -> torch.Tensor:
    """Feed the tokens not yet in `cache` (tokens[cache.pos:]) → their logits [n, V]."""
    x = torch.tensor([tokens[cache.pos:]], dtype=torch.long, device=device)
    return model(x, cache=cache).logits[0]


def verify_proposals(
    p: torch.Tensor, q: torch.Tensor, proposals: list[int], greedy: bool, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Accept draft proposals left to right → (number accepted, the target's own next token).

    p [k+1, V]: target probabilities at each proposal and one past them; q [k, V]: the draft's.
    Greedy: accept while a proposal is the target's argmax. Sampling: accept x with probability
    min(1, p(x)/q(x)); on the first rejection draw from norm(max(0, p - q)), which makes every
    emitted token distributed exactly as the target's p; if all pass, draw a bonus token from p[k].
    """
    k = len(proposals)
    for i, tok in enumerate(proposals):
        if greedy:
            ok = int(p[i].argmax()) == tok
        else:
            ratio = p[i, tok] / q[i, tok].clamp_min(1e-20)
            ok = bool(torch.rand((), generator=generator, device=p.device) < ratio)
        if not ok:
            if greedy:
                return i, int(p[i].argmax())
            residual = (p[i] - q[i]).clamp_min(0)
            if residual.sum() <= 0:  # p == q numerically: the rejection had probability ~0
                residual = p[i]
            return i, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    bonus = int(p[k].argmax()) if greedy else int(torch.multinomial(p[k], 1, generator=generator))
    return k, bonus


@torch.inference_mode()
def speculative_generate(
    target: torch.nn.Module,
    draft: torch.nn.Module,
    prompt_ids: list[int],
    params: SamplingParams | None = None,
    k: int = 4,
    tokenizer=None,
) -> SpeculativeResult:
    """Speculative decoding (Leviathan et al. 2023) for one prompt.

    Each round the draft proposes up to k tokens one at a time; the target scores all of them in one
    forward; proposals are accepted left to right (greedy: while they equal the target's argmax;
    sampling: with probability min(1, p/q), a rejection resamples from norm(max(0, p - q))), and the
    target adds one token of its own. Both caches are rolled back by setting `cache.pos`. The output
    has the target's distribution — with greedy decoding it is identical to plain greedy.
    """
    params = params or SamplingParams()
    if k < 1:
        raise ValueError(f"speculative_generate: k={k} must be >= 1")
    if params.repetition_penalty != 1.0:
        raise ValueError("speculative_generate: repetition_penalty is not supported (each proposal has its own history)")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(params, name) != 0.0:
            raise ValueError(f"speculative_generate: {name} is not supported (each proposal has its own history)")
    if params.stop_strings:
        raise ValueError("speculative_generate: stop_strings are not supported; use stop_ids")
    for name, m in (("target", target), ("draft", draft)):
        if getattr(m.config, "sliding_window", 0):
            raise ValueError(f"speculative_generate: the {name} uses sliding_window; its ring-buffer cache cannot roll back")
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(
            f"speculative_generate: draft vocab_size={draft.config.vocab_size} != target vocab_size={target.config.vocab_size}"
        )
    limit = min(target.config.max_seq_len, draft.config.max_seq_len)
    check_context([len(prompt_ids)], params.max_new_tokens, limit)
    stop_ids = set(params.stop_ids)
    if tokenizer is not None:
        stop_ids.add(tokenizer.eos_id)

    device, dtype = _device_dtype(target)
    gen = make_generator(params.seed, device)
    max_len = len(prompt_ids) + params.max_new_tokens
    t_cache = target.new_cache(1, max_len, device=device, dtype=dtype)
    d_cache = draft.new_cache(1, max_len, device=device, dtype=_device_dtype(draft)[1])

    def dist(logits: torch.Tensor) -> torch.Tensor:
        """Processed logits [n, V] → probabilities [n, V] (one-hot argmax when greedy)."""
        logits = process_logits(logits.float(), params)
        if params.greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.size(-1)).float()
        return torch.softmax(logits, dim=-1)

    seq = list(prompt_ids)
    # Invariant at the top of each round: each cache holds a prefix of seq[:-1]; `_feed` adds the
    # missing tail, so the first round is also the prefill.
    new: list[int] = []
    proposed = accepted = forwards = 0
    done = False
    while not done and len(new) < params.max_new_tokens:
        # never let the target consume more than prompt + max_new_tokens positions
        kk = min(k, params.max_new_tokens - len(new))
        proposals: list[int] = []
        q_rows: list[torch.Tensor] = []
        for _ in range(kk):
            q = dist(_feed(draft, d_cache, seq + proposals, device)[-1:])[0]  # [V]
            tok = int(q.argmax()) if params.greedy else int(torch.multinomial(q, 1, generator=gen))
            proposals.append(tok)
            q_rows.append(q)
        # target: one forward over the tail of seq and all proposals → p for each proposal + a bonus
        p = dist(_feed(target, t_cache, seq + proposals, device)[-(kk + 1):])  # [kk+1, V]
        forwards += 1
        proposed += kk
        n_ok, extra = verify_proposals(p, torch.stack(q_rows), proposals, params.greedy, gen)
        accepted += n_ok
        for tok in proposals[:n_ok] + [extra]:
            if len(new) >= params.max_new_tokens:
                break
            if tok in stop_ids:
                if params.keep_stop_id:
                    new.append(tok)
                done = True
                break
            new.append(tok)
            seq.append(tok)
        # roll back: keep only what is still a prefix of seq, minus its last token (fed next round)
        t_cache.pos = min(t_cache.pos, len(seq) - 1)
        d_cache.pos = min(d_cache.pos, len(seq) - 1)
    return SpeculativeResult(tokens=new, proposed=proposed, accepted=accepted, target_forwards=forwards)
