"""Sampling and decoding over token ids: `SamplingParams` and the logits processing every sampler shares,
`Engine` (batched generate and streaming, a front of the serving engine in scratchlm/engine/) and
`speculative_generate` (draft + target on contiguous caches). `scratchlm generate` is registered by
generate_cli.py (which loads this module only when the command runs, so that `scratchlm --help` does not
import torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

# ----------------------------------------------------------------------------------------------
# Sampling parameters and logits processing


@dataclass
class SamplingParams:
    """How to pick tokens; temperature 0 means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int = 0  # 0 → no top-k filter
    top_p: float = 1.0  # 1 → no nucleus filter
    repetition_penalty: float = 1.0  # 1 → off; > 1 discourages tokens already in the prompt or output
    max_new_tokens: int = 64
    stop_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)  # need a tokenizer (or decode function)
    seed: int | None = None  # None → the global torch RNG
    keep_stop_id: bool = False  # keep the stop id that ended a row in its output (RL trains on it)

    def __post_init__(self) -> None:
        checks = [
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k >= 0, ">= 0 (0 disables it)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"SamplingParams.{name}={getattr(self, name)!r} must be {rule}")
        if any(not s for s in self.stop_strings):
            raise ValueError("SamplingParams.stop_strings must not contain an empty string")

    @property
    def greedy(self) -> bool:
        """True when tokens are chosen by argmax."""
        return self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty: logits of tokens in `seen` [B, V] bool are divided by `penalty` if positive,
    multiplied if negative (so with penalty > 1 they always go down)."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf (ties at the k-th value are kept)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Drop a token when the mass strictly before it already reaches p; the top token always stays.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # even when p is so small that it rounds to 0 (mass_before 0 ≥ 0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Repetition penalty, temperature, top-k, top-p on [B, V] logits → logits to sample from."""
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return logits
    logits = logits / params.temperature
    logits = top_k_filter(logits, params.top_k)
    return top_p_filter(logits, params.top_p)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from processed [B, V] logits → [B] long."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A seeded RNG for reproducible sampling, or None to use torch's global RNG."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


# ----------------------------------------------------------------------------------------------
# The engine


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def check_context(prompt_lens: Sequence[int], max_new_tokens: int, max_seq_len: int) -> None:
    """Raise if the longest prompt plus max_new_tokens does not fit in the model's context."""
    if not prompt_lens:
        raise ValueError("generate: no prompts given")
    for i, n in enumerate(prompt_lens):
        if n == 0:
            raise ValueError(f"generate: prompt {i} is empty; give at least one token (e.g. a BOS or <|im_start|>)")
    longest = max(prompt_lens)
    if longest + max_new_tokens > max_seq_len:
        row = list(prompt_lens).index(longest)
        raise ValueError(
            f"generate: prompt {row} has {longest} tokens + max_new_tokens={max_new_tokens} = "
            f"{longest + max_new_tokens} exceeds model.max_seq_len={max_seq_len}; "
            f"shorten the prompt or lower max_new_tokens to {max(0, max_seq_len - longest)}"
        )


class Engine:
    """The generation API of one model (`generate`, `stream`, `generate_text`): a front of the serving engine
    (scratchlm.engine.LLMEngine), which schedules every call's prompts together over its paged KV cache, so
    offline evaluation, the CLI and the server share one generation path. The tokenizer (optional) adds
    `<|im_end|>` as a stop id and lets stop strings be checked."""

    def __init__(self, model: torch.nn.Module, tokenizer=None, max_batch: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_batch = max_batch
        self._llm = None

    @property
    def llm(self):
        """The LLMEngine behind this front (built on first use; its KV pool is kept between calls)."""
        if self._llm is None:
            from scratchlm.engine import LLMEngine

            # Offline callers queue whole evaluation sets: no waiting limit, max_batch sequences decoding at once.
            self._llm = LLMEngine(self.model, self.tokenizer, max_num_seqs=self.max_batch, max_waiting=1 << 30)
        return self._llm

    def _check(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
        # Offline callers want the whole answer: a prompt that leaves no room for max_new_tokens is an error here,
        # where the server would end it early with finish_reason "length". The engine checks everything else.
        check_context([len(p) for p in prompts], params.max_new_tokens, self.config.max_seq_len)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None) -> list[list[int]]:
        """Generated ids (prompt excluded, stop id / stop string cut off) for each prompt."""
        params = params or SamplingParams()
        self._check(prompts, params)
        return self.llm.generate(prompts, params)

    def stream(self, prompt_ids: list[int], params: SamplingParams | None = None) -> Iterator[int]:
        """Yield generated token ids one by one as they are decided (same tokens as `generate`)."""
        params = params or SamplingParams()
        self._check([prompt_ids], params)
        handle = self.llm.submit(prompt_ids, params)
        given = 0
        try:
            for _ in handle:
                # With a stop string, ids are final only once the sample has ended (the tail is cut then).
                ids = handle.token_ids[0]
                ready = len(ids) if (handle.finished or not params.stop_strings) else given
                yield from ids[given:ready]
                given = ready
            yield from handle.token_ids[0][given:]
        finally:
            if not handle.finished:
                handle.cancel()
                self.llm.step()  # frees its blocks now: nobody else may drive this engine

    def generate_text(self, prompt: str, params: SamplingParams | None = None, chat: bool = False) -> str:
        """Encode a prompt (optionally as a ChatML user turn), generate, decode the answer."""
        if self.tokenizer is None:
            raise ValueError("Engine.generate_text needs a tokenizer")
        ids = self.encode_prompt(prompt, chat)
        return self.tokenizer.decode(self.generate([ids], params)[0], skip_special_tokens=True)

    def encode_prompt(self, prompt: str, chat: bool = False) -> list[int]:
        """Prompt text → ids; chat=True wraps it as a user turn and opens the assistant turn.

        The text is cleaned as `prepare` cleans training data (NFKC: "你是谁？" → "你是谁?"), so a prompt
        looks like what the model was trained on.
        """
        from scratchlm.data.clean import clean_text

        prompt = clean_text(prompt)
        if chat:
            ids, _ = self.tokenizer.encode_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)
            return list(ids)
        return self.tokenizer.encode(prompt)


# ----------------------------------------------------------------------------------------------
# Speculative decoding


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

    device, dtype = _model_device_dtype(target)
    gen = make_generator(params.seed, device)
    max_len = len(prompt_ids) + params.max_new_tokens
    t_cache = target.new_cache(1, max_len, device=device, dtype=dtype)
    d_cache = draft.new_cache(1, max_len, device=device, dtype=_model_device_dtype(draft)[1])

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


# ----------------------------------------------------------------------------------------------
# Loading for the CLI (`scratchlm generate` itself lives in generate_cli.py, which imports no torch)


def load_for_generate(run_dir: str | Path, device: str = "auto"):
    """(model in eval mode, tokenizer or None) from a run folder, on the chosen device."""
    from scratchlm.device import pick_device
    from scratchlm.runs import load_run

    model, tokenizer, _ = load_run(run_dir, device=pick_device(device))
    return model, tokenizer
