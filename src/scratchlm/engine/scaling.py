"""Inference-time scaling: N samples of one prompt from one shared prefill, then one of them picked.

`sample_n` submits each prompt as ONE request with n samples: the engine prefills its prompt once and forks the
n samples over the paged KV cache (they share the prompt's blocks; `LLMEngine.stats()["prompt_tokens_total"]`
grows by the prompt's length once, not n times). Two ways to pick:
- self-consistency (`self_consistency`): a majority vote on the answer each sample gives
  (`data.answers.extract_answer`, the form `check_answer` grades). Ties go to the answer that appears first in
  sample order, and the pick is that answer's first sample; when no sample gives an answer, sample 0 is picked.
  Sample i is seeded `seed + i`, so the whole pick is deterministic for a given seed.
- best-of-N (`best_of`): the highest score of a `Scorer` — a reward-model run (`reward_scorer`,
  `load_reward_run`) or a verifier function (`verifier_scorer`); ties go to the lowest sample index.
With N = 1 both return the one sample, which is the plain sample of the same seed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from scratchlm.data.answers import extract_answer
from scratchlm.engine.sampling import SamplingParams

# (prompt messages, completions) → one score per completion, higher is better
Scorer = Callable[[Sequence[list[dict]], Sequence[str]], list[float]]
METHODS = ("self_consistency", "best_of")


@dataclass
class Pick:
    """Which of a prompt's samples was picked, and why: the extracted answers and their votes, or the scores."""

    index: int
    method: str
    answers: list[str | None] | None = None
    votes: dict[str, int] | None = None
    scores: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The pick as JSON-able fields (None ones left out)."""
        d = {"method": self.method, "picked": self.index, "answers": self.answers, "votes": self.votes,
             "scores": self.scores}
        return {k: v for k, v in d.items() if v is not None}


def sample_n(engine: Any, prompts: Sequence[Sequence[int]], params: SamplingParams, n: int) -> list[list[list[int]]]:
    """n samples (generated ids) of each prompt: one request per prompt, prefilled once and forked into n samples.
    `engine` is an `LLMEngine`; a prompt it refuses is an error naming it, with none of the batch left queued."""
    handles = engine.submit_all(prompts, params, n=n, caller="sample_n")
    engine.run_until_done(handles)
    return [h.token_ids for h in handles]


def majority_vote(answers: Sequence[str | None]) -> tuple[int, dict[str, int]]:
    """(index of the picked sample, votes per answer): the most frequent answer (None never votes); a tie goes to
    the tied answer seen first in sample order, and the pick is its first sample; no answer at all picks 0."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0, {}
    top = max(votes.values())
    # Counter keeps first-insertion order, which is sample order: the first answer reaching `top` wins the tie.
    winner = next(a for a in votes if votes[a] == top)
    return answers.index(winner), dict(votes)


def self_consistency(completions: Sequence[str], task: str) -> Pick:
    """Majority vote over the completions' answers as `task` extracts them (a task name, "number" or "text")."""
    answers = [extract_answer(task, c) for c in completions]
    index, votes = majority_vote(answers)
    return Pick(index, "self_consistency", answers=answers, votes=votes)


def best_of(prompt: list[dict], completions: Sequence[str], scorer: Scorer) -> Pick:
    """The completion the scorer rates highest (ties: the lowest index)."""
    scores = [float(s) for s in scorer([prompt] * len(completions), completions)]
    if len(scores) != len(completions):
        raise ValueError(f"best_of: the scorer gave {len(scores)} scores for {len(completions)} completions")
    index = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return Pick(index, "best_of", scores=scores)


def reward_scorer(reward_model: Any, tokenizer: Any, batch: int = 16) -> Scorer:
    """A scorer from a reward model (model/reward.py) and its tokenizer: r(prompt, completion)."""
    from scratchlm.model.reward import score_texts

    def score(prompts: Sequence[list[dict]], completions: Sequence[str]) -> list[float]:
        return score_texts(reward_model, tokenizer, prompts, completions, batch=batch)

    return score


def verifier_scorer(verify: Callable[[list[dict], str], float | bool]) -> Scorer:
    """A scorer from a verifier `verify(prompt messages, completion)` → a score, or True/False (1.0/0.0)."""

    def score(prompts: Sequence[list[dict]], completions: Sequence[str]) -> list[float]:
        return [float(verify(p, c)) for p, c in zip(prompts, completions)]

    return score


def load_reward_run(run_dir: str | Path, device: Any = None, flag: str = "--reward-run") -> tuple[Any, Any]:
    """(reward model, tokenizer) of a reward-model run; a missing folder, a run that is not a reward model, or one
    without a tokenizer is a ValueError naming `flag`."""
    from scratchlm.runs import load_run

    path = Path(run_dir)
    if not (path / "config.toml").is_file():
        raise ValueError(f"{flag} {run_dir}: no such run folder (expected config.toml and model.safetensors of a "
                         f"reward-model run, e.g. the demo's RUNS/reward)")
    model, tokenizer, cfg = load_run(path, device=device)
    if cfg.train.objective != "reward":
        raise ValueError(f"{flag} {run_dir}: not a reward-model run (train.objective={cfg.train.objective!r}, "
                         f"need 'reward')")
    if tokenizer is None:
        raise ValueError(f"{flag} {run_dir}: no tokenizer.json; the reward model needs one to read replies")
    return model, tokenizer
