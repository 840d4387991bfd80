"""The demo's tool-use measurement: the SFT model as an agent with the calculator against the same model answering
alone, on held-out 4-5 digit problems of the eval split (agent/tool_data.py's `tool_use_accuracy`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.demo.common import say
from scratchlm.demo.settings import DemoSettings


def run_tool_eval(run_dir: Path, s: DemoSettings) -> dict[str, Any]:
    """tool_use_accuracy of the model in `run_dir` on s.tool_eval held-out problems of s.eval_split (greedy, the
    tools of s.tool_names listed as in training): {"n", "agent", "direct", "called_calculator", "samples", ...}."""
    from scratchlm.agent.tool_data import held_out_problems, tool_use_accuracy
    from scratchlm.engine.offline import LLM

    say(f"evaluating tool use: {s.tool_eval} held-out 4-5 digit problems ({s.eval_split}), the agent with "
        f"{', '.join(s.tool_names)} vs the same model alone")
    problems = held_out_problems(s.tool_eval, s.eval_split, seed=s.seed)
    out = tool_use_accuracy(LLM.from_run(run_dir), problems, tools=s.tool_names)
    return {**out, "tools": list(s.tool_names), "split": s.eval_split}
