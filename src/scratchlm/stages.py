"""The one registry of training stages: each `scratchlm train STAGE`, `train.objective` value and objective class
is listed here once. The config's allowed objectives, the train CLI's subcommands and `make_objective` all read
it. Importing this module loads no torch (the objective classes are imported by name when a stage runs).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """A training stage: its objective class (as "module:Class"), the shards it reads and a one-line help."""

    name: str
    objective: str
    data_kind: str  # `scratchlm prepare --kind` of its --data
    help: str
    needs_init: bool = False  # starts from --init-from RUN (a reference, or the model to adapt)

    def objective_class(self) -> type:
        """The Objective subclass that trains this stage (imported on first use)."""
        module, cls = self.objective.split(":")
        return getattr(importlib.import_module(module), cls)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("pretrain", "scratchlm.train.objectives:Pretrain", "pretrain", "next-token pretraining on token shards"),
    Stage("sft", "scratchlm.train.objectives:SFT", "sft",
          "supervised fine-tuning on ChatML conversations (assistant-only loss)"),
    Stage("reward", "scratchlm.train.reward_objective:Reward", "preference",
          "reward model (scalar head on the last token, pairwise loss) from --init-from SFT_RUN on "
          "`prepare --kind preference` shards", needs_init=True),
    Stage("dpo", "scratchlm.train.dpo:DPO", "preference",
          "preference optimisation (DPO / IPO / cDPO / SimPO: --set pref.loss_type=...) from --init-from SFT_RUN "
          "on `prepare --kind preference` shards", needs_init=True),
    Stage("grpo", "scratchlm.train.grpo:GRPO", "prompt",
          "RL on verifiable answers (GRPO / DAPO / Dr. GRPO / CISPO losses: --set rl.loss_agg=...) from --init-from "
          "SFT_RUN on `prepare --kind prompt` shards", needs_init=True),
    Stage("ppo", "scratchlm.train.ppo:PPO", "prompt",
          "RLHF with PPO (actor + critic, KL-shaped rewards, GAE, clipped policy and value losses) from --init-from "
          "SFT_RUN on `prepare --kind prompt` shards; rewards from --set rl.reward_model=REWARD_RUN or rl.reward_funcs",
          needs_init=True),
    Stage("distill", "scratchlm.train.distill:Distill", "sft",
          "logit distillation from --teacher RUN (T²·KL forward or reverse, mixed with CE by distill.alpha) on "
          "`prepare --kind sft` shards (e.g. teacher-written answers with their <think> traces)"),
    Stage("agent", "scratchlm.agent.rl:AgentGRPO", "prompt",
          "agentic RL: GRPO over multi-turn tool-use rollouts (≤ rl.max_turns replies, tools from rl.tools run "
          "between them, their results masked out of the loss; rewards on the final answer + a small format term) "
          "from --init-from TOOL_SFT_RUN on `prepare --kind prompt` shards", needs_init=True),
)}
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)


def get_stage(name: str) -> Stage:
    """The registered stage `name`, or a ValueError listing the registered ones."""
    if name not in STAGES:
        raise ValueError(f"unknown training stage {name!r}; registered: {', '.join(STAGE_NAMES)}")
    return STAGES[name]


def objective_for(name: str, *args: Any, **kwargs: Any) -> Any:
    """An instance of stage `name`'s objective, built with `args`/`kwargs`."""
    return get_stage(name).objective_class()(*args, **kwargs)
