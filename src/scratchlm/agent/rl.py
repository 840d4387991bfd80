"""Agentic RL: `scratchlm train agent`, GRPO over multi-turn tool-use rollouts (MiniMind's agent trainer is the
anchor: at most 3 turns, observations masked, CISPO available through rl.loss_agg).

Each step samples rl.num_generations agent runs per prompt through the engine (train/multiturn.py: reply → tool
calls parsed and run by this agent's `ToolRegistry` → the results as `tool` messages → next reply, at most
rl.max_turns replies), scores each run, normalises the scores within its group into advantages and takes
GRPO's policy loss (train/grpo.py, train/rl_losses.py) over the model's own tokens only: the loss mask is
`encode_chat`'s, 0 on the tools' results, the prompt and the template's scaffolding.

Rewards (rl.reward_funcs / rl.reward_weights, default "answer,format" with weights 1.0 and 0.1):
- `answer`: 1 when the final answer (the last reply, which made no call) is right (`answers.check_answer`);
- `digits`: the share of an arithmetic answer's digits that are right;
- `format`: 1 when the run ended in an answer on a stop token and every call it made was readable and ran
  without an error, else 0 — a small push towards well-formed calls and towards finishing;
- `length`: −(tokens the model wrote) / (rl.max_turns · rl.max_new_tokens).

It lives in agent/ because the tools do: train/ sits below agent/ (layer 7 vs 8), so the rollout there takes the
tools as a callable and this module, which may import both, passes the registry's `call`. The stage registry
(scratchlm/stages.py) names this class by string, so nothing below imports it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from scratchlm.agent.builtin import builtin_tools
from scratchlm.agent.tools import ToolRegistry
from scratchlm.config import Config, ConfigError
from scratchlm.train.batches import Batch, rows_batch
from scratchlm.train.grpo import GRPO
from scratchlm.train.multiturn import Trajectory, chat_of_prompt, multi_turn_rollout, trajectory_rows
from scratchlm.train.rule_rewards import parse_rewards
from scratchlm.train.rl_losses import group_advantages, zero_variance_groups


def _answer(trajs: Sequence[Trajectory], answer: Sequence[str], task: Sequence[str], **_: Any) -> list[float]:
    from scratchlm.data.answers import check_answer

    return [float(t.answer is not None and check_answer(k, t.answer, a)) for t, a, k in zip(trajs, answer, task)]


def _digits(trajs: Sequence[Trajectory], answer: Sequence[str], task: Sequence[str], **_: Any) -> list[float]:
    from scratchlm.data.answers import digit_credit

    return [digit_credit(k, t.answer or "", a) for t, a, k in zip(trajs, answer, task)]


def _format(trajs: Sequence[Trajectory], **_: Any) -> list[float]:
    return [float(t.stopped == "answer" and t.bad_calls == 0) for t in trajs]


def _length(trajs: Sequence[Trajectory], budget: int, **_: Any) -> list[float]:
    return [-t.generated_tokens / budget for t in trajs]


AGENT_REWARDS = {"answer": _answer, "digits": _digits, "format": _format, "length": _length}


def agent_rewards(names: str, weights: str) -> list[tuple[str, Any, float]]:
    """[(name, function, weight)] of rl.reward_funcs / rl.reward_weights over agent runs; errors name the fields."""
    return parse_rewards(names, weights, AGENT_REWARDS, where=" for the agent stage")


def agent_registry(tools: str) -> ToolRegistry:
    """The registry of rl.tools (comma-separated built-in tools that need no setup: calculator, date)."""
    names = [n.strip() for n in tools.split(",") if n.strip()]
    if not names:
        raise ConfigError("rl.tools is empty: the agent stage needs at least one tool (e.g. calculator)")
    try:
        return ToolRegistry(builtin_tools(names))
    except ValueError as e:
        raise ConfigError(f"rl.tools={tools!r}: {e}") from None


class AgentGRPO(GRPO):
    """GRPO on multi-turn tool-use rollouts (see the module doc), on `prepare --kind prompt` shards."""

    name = "agent"

    def __init__(self, cfg: Config, shards: Any = None, tokenizer: Any = None, reference: nn.Module | None = None,
                 registry: ToolRegistry | None = None) -> None:
        # GRPO.__init__ parses rl.reward_funcs against the single-turn rewards; the agent's are its own
        super(GRPO, self).__init__(cfg, shards, tokenizer, reference)
        self.rewards = agent_rewards(cfg.rl.reward_funcs, cfg.rl.reward_weights)
        self.check_rewards_apply(self.rewards)
        self.registry = registry if registry is not None else agent_registry(cfg.rl.tools)
        self.tools = self.registry.schemas()

    def max_completion_tokens(self) -> int:
        """Every reply of a run is trained: up to rl.max_turns · rl.max_new_tokens tokens (dr_grpo's normaliser)."""
        return self.cfg.rl.max_turns * self.cfg.rl.max_new_tokens

    def _run_tool(self, name: str, arguments: str) -> tuple[str, bool]:
        obs = self.registry.call(name, arguments)
        return obs.text, obs.error

    def sample_agents(self, policy: nn.Module, indices: list[int], seed: int) -> tuple[list[Any], list[Trajectory]]:
        """(the prompts, rl.num_generations agent runs of each), sampled by `policy` in eval mode."""
        from scratchlm.engine import LLMEngine
        from scratchlm.engine.sampling import SamplingParams

        rl, G = self.cfg.rl, self.cfg.rl.num_generations
        prompts = [self.shards.prompt(i) for i in indices]
        if self._engine is None:  # one engine per run, no prefix caching: the weights change every step
            n = len(prompts) * G
            self._engine = LLMEngine(policy, self.tokenizer, prefix_caching=False, max_num_seqs=n, max_waiting=n)
        was_training = policy.training
        policy.eval()
        try:
            trajs = multi_turn_rollout(
                self._engine, self.tokenizer, [chat_of_prompt(self.tokenizer, p.ids) for p in prompts], self.tools,
                self._run_tool, G,
                lambda s, m: SamplingParams(temperature=rl.temperature, top_p=rl.top_p, max_new_tokens=m,
                                            keep_stop_id=True, seed=s),
                max_turns=rl.max_turns, max_new_tokens=rl.max_new_tokens, seed=seed)
        finally:
            policy.train(was_training)
        return prompts, trajs

    def score_agents(self, prompts: list[Any], trajs: list[Trajectory]) -> tuple[torch.Tensor, dict[str, float]]:
        """(weighted sum of the rewards [N·G], per-reward mean/std and the runs' statistics as plain floats)."""
        rl, G = self.cfg.rl, self.cfg.rl.num_generations
        columns = {"answer": [p.answer for p in prompts for _ in range(G)],
                   "task": [str(p.columns.get("task", "")) for p in prompts for _ in range(G)],
                   "budget": rl.max_turns * rl.max_new_tokens}
        total = torch.zeros(len(trajs))
        stats: dict[str, float] = {}
        for name, fn, w in self.rewards:
            r = torch.tensor(fn(trajs, **columns), dtype=torch.float32)
            total += w * r
            stats[f"rewards/{name}/mean"], stats[f"rewards/{name}/std"] = float(r.mean()), float(r.std())
        if "answer" in [n for n, _, _ in self.rewards]:
            stats["accuracy"] = stats["rewards/answer/mean"]
        n = len(trajs)
        stats.update({"turns": sum(len(t.replies) for t in trajs) / n, "tool_calls": sum(t.calls for t in trajs) / n,
                      "bad_calls": sum(t.bad_calls for t in trajs) / n,
                      "answered": sum(t.stopped == "answer" for t in trajs) / n,
                      "completion_length": sum(t.generated_tokens for t in trajs) / n})
        return total, stats

    @torch.no_grad()
    def rollout(self, indices: list[int], seed: int) -> Batch:
        """G agent runs per prompt, scored, as one training batch (targets on the model's own tokens only)."""
        rl, G = self.cfg.rl, self.cfg.rl.num_generations
        prompts, trajs = self.sample_agents(self.policy, indices, seed)
        total, stats = self.score_agents(prompts, trajs)
        flat = group_advantages(total, G, rl.scale_rewards)
        dead = zero_variance_groups(total, G)
        stats.update({"reward": float(total.mean()), "reward_std": float(total.std()),
                      "frac_reward_zero_std": float(dead.float().mean())})
        keep = [i for i in range(len(trajs)) if not (rl.dynamic_sampling and bool(dead[i // G]))]
        if not keep:  # every group carried no signal: one row with zero advantage keeps the step well-defined
            keep, flat = [0], torch.zeros_like(flat)
        batch = rows_batch(trajectory_rows([trajs[i] for i in keep]), use_mask=True, use_docs=False)
        batch["advantages"] = flat[keep]
        batch["old_logp"] = self.logprobs(self.policy, batch)
        if self.reference is not None:
            batch["ref_logp"] = self.logprobs(self.reference, batch)
        batch["stats"] = stats
        return batch
