"""What the rollout stages (GRPO, PPO) share: prompts in a seeded order by position, one serving engine per run,
G sampled completions per prompt (seeded by position, so a resumed run samples what the uninterrupted one did),
decoding, scoring with TRL-signature reward functions, the right-padded training rows, per-token log-probs under
no_grad, and μ optimisation passes over each rollout batch (`rl.num_iterations`).

μ passes: a rollout batch (this process's micro-batches of one optimizer step) is taken by μ consecutive optimizer
steps; the log-probs of the policy that sampled it (`old_logp`, and PPO's old values and advantages) stay those of
the rollout, so from the second pass on the ratio π/π_old departs from 1 and clipping bites (TRL's `num_iterations`
for GRPO, `num_ppo_epochs` for PPO, here with one minibatch per pass). The buffered batch is part of the objective's
state, and so of every checkpoint (checkpoint.py stores tensors of the objective state in objective.pt): a run
stopped between two passes resumes on the same batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from scratchlm.config import Config, ConfigError
from scratchlm.train.batches import IGNORE, Batch, epoch_order, open_data
from scratchlm.train.objectives import Objective, token_logprobs


class Samples(NamedTuple):
    """One rollout's completions: G consecutive rows per prompt (N·G rows in all)."""

    prompts: list[Any]  # N shards.datasets.Prompt (ids up to the assistant generation prompt, answer, columns)
    completions: list[list[int]]  # N·G token lists, the stop id kept when the sample stopped
    texts: list[str]  # the completions decoded without special tokens
    stopped: list[bool]  # N·G: ended on a stop id (False: cut at rl.max_new_tokens)


class RolloutObjective(Objective):
    """Base of the stages that learn from their own samples on `scratchlm prepare --kind prompt` shards. Subclasses
    write `rollout(indices, seed) -> Batch` (built from `sample`, `score`, `rows_batch`, `logprobs`) and `loss`."""

    val_is_nll = False
    # Not under FSDP2: the engine runs the policy outside the training forward, under inference_mode and for a
    # different number of steps on each rank; sharded weights would be gathered there by unmatched collectives
    # into inference tensors (PPO's policy is not even the FSDP root). The loop refuses it up front.
    fsdp = False

    def __init__(self, cfg: Config, shards: Any = None, tokenizer: Any = None, reference: nn.Module | None = None) -> None:
        super().__init__(cfg)
        self.shards = shards if shards is not None else open_data(cfg.train.data, "train.data")
        kind = getattr(self.shards, "kind", "prompt")
        if kind != "prompt":
            raise ConfigError(f"train.data={cfg.train.data!r} holds {kind!r} shards; {self.name} needs "
                              "`scratchlm prepare --kind prompt` (prompts with checkable answers)")
        self.tokenizer = tokenizer
        self.reference = reference
        self.position = 0  # prompts consumed, counted over all processes
        self._perm: tuple[int, np.ndarray] = (-1, np.arange(0))
        self._engine: Any = None  # the rollout engine over the policy, built on the first rollout
        self._buffer: list[Batch] | None = None  # the current rollout batch while passes remain
        self._passes = 0  # optimizer steps already taken on self._buffer

    # -- setup ----------------------------------------------------------------------------------------
    def check_rewards_apply(self, rewards: list[tuple[str, Any, float]]) -> None:
        """Refuse, before any training, prompts the `answer` reward cannot check (open-ended synthetic tasks such as
        fortune): mid-run it would stop at the first such prompt drawn."""
        if "answer" not in [n for n, _, _ in rewards]:
            return
        from scratchlm.data.answers import can_check

        tasks = [str(self.shards.prompt(i).columns.get("task", "")) for i in range(self.shards.n_docs)]
        bad = sorted({t for t in tasks if not can_check(t)})
        if bad:
            n = sum(t in bad for t in tasks)
            raise ConfigError(f"train.data={self.cfg.train.data!r}: {n} of {len(tasks)} prompts are of task(s) "
                              f"{', '.join(repr(b) for b in bad)}, which the `answer` reward cannot check; prepare "
                              "prompts of checkable tasks only (add2, identity, ...) or drop `answer` from rl.reward_funcs")

    def _load_init(self, need_reference: bool) -> None:
        """The tokenizer (rewards decode completions) and, when asked, the frozen reference: the --init-from run."""
        init = self.cfg.train.init_from
        if self.tokenizer is None:
            from scratchlm.tokenizer.bpe import Tokenizer

            if not init:
                raise ConfigError(f"{self.name} decodes completions for its rewards: pass --init-from RUN "
                                  "(with tokenizer.json)")
            self.tokenizer = Tokenizer.load(init)
        if need_reference and self.reference is None:
            from scratchlm.runs import load_run

            if not init:
                raise ConfigError(f"{self.name} keeps the policy near its reference, the --init-from run: pass "
                                  "--init-from RUN")
            self.reference, _, _ = load_run(init)
        if self.reference is not None:
            self.reference.eval().requires_grad_(False)

    def frozen_models(self) -> list[nn.Module]:
        return [self.reference] if self.reference is not None else []

    # -- rollouts -------------------------------------------------------------------------------------
    def _prompt_at(self, pos: int) -> int:
        n = self.shards.n_docs
        epoch, i = divmod(pos, n)
        if self._perm[0] != epoch:
            self._perm = (epoch, epoch_order(n, self.cfg.train.seed, epoch, True))
        return int(self._perm[1][i])

    @torch.no_grad()
    def sample(self, policy: nn.Module, indices: list[int], seed: int) -> Samples:
        """rl.num_generations completions of each prompt, sampled by `policy` in eval mode; prompt k's samples are
        seeded by seed + k·G."""
        from scratchlm.engine import LLMEngine
        from scratchlm.engine.sampling import SamplingParams

        rl, G = self.cfg.rl, self.cfg.rl.num_generations
        was_training = policy.training
        policy.eval()
        prompts = [self.shards.prompt(i) for i in indices]
        if self._engine is None:
            # One engine (and KV pool) for the whole run. The weights change every step, so no computed block may
            # be reused by a later rollout: without prefix caching a freed block is never looked up again.
            self._engine = LLMEngine(policy, self.tokenizer, prefix_caching=False, max_num_seqs=len(prompts) * G,
                                     max_waiting=len(prompts))
        engine = self._engine
        params = [SamplingParams(temperature=rl.temperature, top_p=rl.top_p, max_new_tokens=rl.max_new_tokens,
                                 keep_stop_id=True, seed=seed + k * G) for k in range(len(prompts))]
        handles = [engine.submit([int(t) for t in p.ids], sp, n=G) for p, sp in zip(prompts, params)]
        engine.run_until_done(handles)
        policy.train(was_training)
        completions = [ids for h in handles for ids in h.token_ids]  # [N·G] lists, stop id kept when it stopped
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in completions]
        stopped = [r == "stop" for h in handles for r in h.finish_reasons]
        return Samples(prompts, completions, texts, stopped)

    def score(self, rewards: list[tuple[str, Any, float]], s: Samples) -> tuple[torch.Tensor, dict[str, float]]:
        """(weighted sum of the reward functions [N·G], per-function mean/std as plain floats)."""
        rl, G = self.cfg.rl, self.cfg.rl.num_generations
        columns = {"answer": [p.answer for p in s.prompts for _ in range(G)],
                   "task": [p.columns.get("task", "") for p in s.prompts for _ in range(G)]}
        total = torch.zeros(len(s.texts))
        stats: dict[str, float] = {}
        for name, fn, w in rewards:
            r = torch.tensor(fn([None] * len(s.texts), s.texts, completion_ids=s.completions,
                                max_new_tokens=rl.max_new_tokens, **columns), dtype=torch.float32)
            total += w * r
            stats[f"rewards/{name}/mean"], stats[f"rewards/{name}/std"] = float(r.mean()), float(r.std())
        if "answer" in [n for n, _, _ in rewards]:
            stats["accuracy"] = stats["rewards/answer/mean"]
        return total, stats

    @torch.no_grad()
    def logprobs(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """log p of every target under `model` [B, T] (0 off the completion), on the host. Through forward: under
        FSDP2 the policy is the sharded root, whose weights are gathered only there."""
        dev = _device(model)
        return token_logprobs(model, batch["input_ids"].to(dev), batch["targets"].to(dev)).cpu()

    def rollout(self, indices: list[int], seed: int) -> Batch:
        """One micro-batch of training rows from these prompts' samples (each stage builds its own)."""
        raise NotImplementedError

    def next_batches(self) -> list[Batch]:
        """A fresh rollout batch every rl.num_iterations steps; the same one (old log-probs kept) in between."""
        if self._buffer is None:
            tc, world, rank = self.cfg.train, self.info.world_size, self.info.rank
            N, out = tc.batch_size, []
            for m in range(tc.grad_accum):
                first = self.position + (m * world + rank) * N
                out.append(self.rollout([self._prompt_at(p) for p in range(first, first + N)],
                                        seed=tc.seed * 1_000_003 + first * self.cfg.rl.num_generations))
            self.position += N * tc.grad_accum * world
            self._buffer, self._passes = out, 0
        out = self._buffer
        self._passes += 1
        if self._passes >= self.cfg.rl.num_iterations:  # the last pass: nothing is kept past this step
            self._buffer, self._passes = None, 0
        return out

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"position": self.position}
        if self._buffer is not None:  # stopped between two passes: the batch (tensors) goes into objective.pt
            state.update(buffer=self._buffer, passes=self._passes)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
        self._buffer = state.get("buffer")
        self._passes = int(state.get("passes", 0))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def rows_batch(rows: list[tuple[list[int], list[int]]], max_len: int) -> Batch:
    """(prompt ids, completion ids) rows → input_ids/targets [B, T], right-padded, targets on the completion only."""
    seqs = [(p + c)[:max_len] for p, c in rows]
    T = max(len(s) for s in seqs) - 1
    x = np.zeros((len(seqs), T), dtype=np.int64)
    y = np.full((len(seqs), T), IGNORE, dtype=np.int64)
    for r, ((p, _), s) in enumerate(zip(rows, seqs)):
        n = len(s) - 1
        x[r, :n] = s[:-1]
        y[r, len(p) - 1:n] = s[len(p):]  # position t predicts token t+1: the completion starts after the prompt
    return {"input_ids": torch.from_numpy(x), "targets": torch.from_numpy(y)}
