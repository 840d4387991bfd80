"""Preference measurements on held-out pairs: a policy's implicit-reward accuracy against its reference (DPO),
how often a model's own log-probs prefer the chosen reply, and a reward model's pair accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchlm.config import Config


@torch.no_grad()
def preference_accuracy(model: nn.Module, reference: nn.Module | None, shards: Any, cfg: Config,
                        batch_pairs: int = 16, max_pairs: int = 200) -> dict[str, float]:
    """Held-out implicit-reward accuracy (chosen reward > rejected) and mean margin of `model` vs `reference`."""
    from scratchlm.train.dpo import DPO, pair_batch

    obj = DPO(cfg, shards, reference=reference)
    margins = []
    for idx in _pair_chunks(shards, batch_pairs, max_pairs):
        out = obj._loss(model, _to(pair_batch(shards, idx, cfg.train.seq_len), model))
        margins.append(out.chosen_rewards - out.rejected_rewards)
    return _accuracy(torch.cat(margins))


@torch.no_grad()
def logprob_preference(model: nn.Module, shards: Any, seq_len: int, batch_pairs: int = 16,
                       max_pairs: int = 200) -> dict[str, float]:
    """How often the model's own summed log-prob of the chosen reply beats the rejected one's (any model, no
    reference: the number an SFT model starts DPO from), and the mean log-prob margin."""
    from scratchlm.train.dpo import pair_batch

    margins = []
    for idx in _pair_chunks(shards, batch_pairs, max_pairs):
        b = _to(pair_batch(shards, idx, seq_len), model)
        logps = model.token_logprobs(b["input_ids"], b["targets"]).sum(-1)  # [2B]: chosen rows, then rejected
        margins.append(logps[: len(idx)] - logps[len(idx):])
    return _accuracy(torch.cat(margins))


@torch.no_grad()
def pair_accuracy(model: Any, shards: Any, seq_len: int, batch_pairs: int = 16, max_pairs: int = 200) -> dict[str, float]:
    """Held-out pair accuracy (r_chosen > r_rejected) and mean margin of a reward model."""
    from scratchlm.train.reward_objective import reward_batch

    d = []
    for idx in _pair_chunks(shards, batch_pairs, max_pairs):
        b = _to(reward_batch(shards, idx, seq_len), model)
        r = model(b["input_ids"], b["lengths"])  # [2B]
        d.append(r[: len(idx)] - r[len(idx):])
    return _accuracy(torch.cat(d))


def _pair_chunks(shards: Any, batch_pairs: int, max_pairs: int) -> list[list[int]]:
    n = min(shards.n_pairs, max_pairs)
    return [list(range(first, min(first + batch_pairs, n))) for first in range(0, n, batch_pairs)]


def _to(batch: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    from scratchlm.train.batches import to_device

    return to_device(batch, next(model.parameters()).device)


def _accuracy(margins: torch.Tensor) -> dict[str, float]:
    """Share of strictly positive margins (a tie is not a win) and their mean."""
    return {"accuracy": float((margins > 0).float().mean()), "margin": float(margins.float().mean())}


@torch.no_grad()
def held_out_reward(policy: nn.Module, tokenizer: Any, reward_model: nn.Module, prompt_file: str | Path,
                    per_task: int = 50, max_new_tokens: int = 64, temperature: float = 0.0, samples: int = 1,
                    seed: int = 0) -> dict[str, Any]:
    """Mean reward-model score of `policy`'s replies to the prompts of a held-out prompts file (at most `per_task`
    of each task; greedy, or `samples` replies each at `temperature`, seeded): {"mean", "n", "tasks": {task: mean}},
    the number PPO with that reward model raises."""
    from collections import defaultdict

    from scratchlm.data.clean import clean_messages
    from scratchlm.data.jsonl import iter_prompt_records
    from scratchlm.engine.offline import LLM
    from scratchlm.engine.sampling import SamplingParams
    from scratchlm.model.reward import score_texts

    prompt_file = Path(prompt_file)
    by_task: dict[str, list[list[dict]]] = defaultdict(list)
    with prompt_file.open(encoding="utf-8") as f:
        for _, messages, cols in iter_prompt_records(f, prompt_file):
            task = str(cols.get("task", ""))
            if len(by_task[task]) < per_task:
                by_task[task].append(clean_messages(messages))
    prompts = [m for ms in by_task.values() for m in ms]
    if not prompts:
        raise ValueError(f"{prompt_file}: no prompts to score")
    context = int(policy.config.max_seq_len) - max_new_tokens
    ids = [list(tokenizer.encode_chat(m, add_generation_prompt=True)[0])[-context:] for m in prompts]
    engine = LLM(policy, tokenizer)
    scores = [0.0] * len(prompts)
    for k in range(samples):  # the mean over `samples` replies per prompt
        params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed + k)
        replies = [tokenizer.decode(o, skip_special_tokens=True) for o in engine.generate(ids, params)]
        scores = [s + r / samples for s, r in zip(scores, score_texts(reward_model, tokenizer, prompts, replies))]
    tasks, i = {}, 0
    for task, ms in by_task.items():
        tasks[task] = sum(scores[i:i + len(ms)]) / len(ms)
        i += len(ms)
    return {"mean": sum(scores) / len(scores), "n": len(scores), "tasks": tasks}
