"""Self-consistency for the agent: N sampled runs of the whole Thought → Action → Observation loop, then a majority
vote on their final answers, with the engine's vote (`engine.scaling.majority_vote`: a tie goes to the answer seen
first, a run without an answer never votes).

A single reply can be voted on from one shared prefill (`engine.scaling.sample_n`); an agent's runs part ways at
their first call, so each run is its own loop, seeded `seed + i`. Voting helps where the errors are noise of the
sampling (a digit miscopied in one run and not in the next), not where the model is wrong the same way each time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from scratchlm.agent.loop import Policy, Trace, run_agent
from scratchlm.agent.tools import ToolRegistry
from scratchlm.data.answers import extract_answer
from scratchlm.engine.scaling import majority_vote


@dataclass
class AgentVote:
    """The N runs, the answer each gave (as `extract_answer` reads it), the votes, and the picked run."""

    traces: list[Trace]
    answers: list[str | None]
    votes: dict[str, int]
    index: int

    @property
    def picked(self) -> Trace:
        """The run whose answer won (its first run), or run 0 when no run answered."""
        return self.traces[self.index]

    def to_json(self) -> dict:
        """The vote and every run's trace as plain JSON data."""
        return {"picked": self.index, "answer": self.picked.answer, "answers": self.answers, "votes": self.votes,
                "runs": [t.to_json() for t in self.traces]}

    def write(self, path: str | Path) -> Path:
        """Write the vote as JSON (UTF-8, indented)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path


def vote_agent(make_policy: Callable[[int], Policy], registry: ToolRegistry, task: str, n: int,
               answer_kind: str = "text", max_steps: int = 6, system: str | None = None) -> AgentVote:
    """Run the agent `n` times on `task`, run i with `make_policy(i)` (a policy sampled with its own seed), and vote
    on the final answers read as `answer_kind` (a task name, "number" or "text")."""
    if n < 1:
        raise ValueError(f"self-consistency needs n >= 1 runs, got {n}")
    extract_answer(answer_kind, "")  # an unknown kind is an error before any run
    traces = [run_agent(make_policy(i), registry, task, max_steps=max_steps, system=system) for i in range(n)]
    answers = [None if t.answer is None else extract_answer(answer_kind, t.answer) for t in traces]
    index, votes = majority_vote(answers)
    return AgentVote(traces, answers, votes, index)
