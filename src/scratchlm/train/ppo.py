"""PPO (RLHF, InstructGPT / TRL's PPOTrainer) in the one training loop: an actor (the policy, from --init-from) and a
critic (a value head per token) trained together by one optimizer.

Each rollout (train/rollout.py: G samples per prompt through the engine, seeded by position) becomes a batch with,
all under no_grad and kept for the rl.num_iterations passes over it:
- the score of each completion: a frozen reward-model run (rl.reward_model, read at the last token of prompt +
  completion) or the weighted rule rewards (rl.reward_funcs), minus rl.missing_eos_penalty when it never stopped;
- old log-probs (the sampling policy), reference log-probs (the frozen --init-from run) and old values (the critic);
- per-token rewards −kl_coef·(log π_old − log π_ref) with the score added at the last token (`kl_shaped_rewards`),
  GAE advantages and returns (γ = rl.gamma, λ = rl.lam), the advantages whitened over the micro-batch.
The loss is the clipped policy loss (ε = rl.eps_low / rl.eps_high, token mean) + rl.vf_coef · the clipped value loss
(rl.cliprange_value). Metrics use TRL's PPO names.

The critic is a separate model, not a second head on the policy's trunk: TRL's choice, and the one that keeps the
value regression's gradients out of the policy's weights (a shared trunk would need its own balance of vf_coef
against the policy loss, and a bad early value fit would move the very features the policy samples from). It is
initialised from the reward-model run when there is one (a trunk that already reads how good a reply is; TRL does
the same) and otherwise from the --init-from run with a fresh, zero head (values start at 0: the first advantages are
the plain rewards, not noise). It costs one more model in memory, which is small at our sizes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchlm.config import Config, ConfigError
from scratchlm.train.batches import IGNORE, Batch
from scratchlm.model.reward import RewardModel, score_ids
from scratchlm.train.rule_rewards import parse_rewards
from scratchlm.train.rl_losses import gae, kl_shaped_rewards, policy_loss, value_loss, whiten
from scratchlm.train.rollout import RolloutObjective, rows_batch

CRITIC_DIR = "critic"  # the finished run's critic: a reward-model run folder beside the policy's model.safetensors


class ValueModel(RewardModel):
    """The critic: a RewardModel's trunk + final norm + [D → 1] head, read at every position (not only the last)."""

    def values(self, input_ids: torch.Tensor) -> torch.Tensor:
        """V of each prefix input_ids[:, :t+1] [B, T]: aligned with token_logprobs, V[:, t] values the state before
        target t is sampled."""
        x, _ = self.lm.hidden_states(input_ids)  # [B, T, D]
        return self.head(self.lm.norm(x)).squeeze(-1).float()


class ActorCritic(nn.Module):
    """The module the loop trains: `policy` (a Transformer, perhaps with LoRA adapters) and `critic` (a ValueModel);
    one optimizer over both. `forward` computes both so DDP/FSDP see a single forward per micro-batch."""

    def __init__(self, policy: nn.Module, critic: ValueModel, critic_lr_scale: float = 1.0) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.config = policy.config
        self.critic_lr_scale = critic_lr_scale

    def lr_scale_of(self, name: str) -> float:
        """The multiple of the schedule's lr a parameter trains at (read by the loop's build_optimizer)."""
        return self.critic_lr_scale if name.startswith("critic.") else 1.0

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log π of each target [B, T], 0 off the targets; V of each position [B, T])."""
        return self.policy.token_logprobs(input_ids, targets), self.critic.values(input_ids)


def _reward_run_error(path: str) -> str | None:
    """Why `path` is not a reward-model run folder, or None."""
    from scratchlm.config import load_run_config

    p = Path(path)
    if not p.is_dir():
        return "no such folder"
    if not (p / "config.toml").exists():
        return "not a run folder (no config.toml)"
    objective = load_run_config(p).train.objective
    if objective != "reward":
        return f"a {objective!r} run, not a reward model (train one with `scratchlm train reward`)"
    return None


class PPO(RolloutObjective):
    """Actor-critic PPO with KL-shaped rewards and GAE on `scratchlm prepare --kind prompt` shards."""

    name = "ppo"

    def __init__(self, cfg: Config, shards: Any = None, tokenizer: Any = None, reference: nn.Module | None = None,
                 reward_model: nn.Module | None = None) -> None:
        super().__init__(cfg, shards, tokenizer, reference)
        rl = cfg.rl
        self.reward_model = reward_model
        self.rewards = [] if (rl.reward_model or reward_model is not None) else parse_rewards(rl.reward_funcs,
                                                                                                rl.reward_weights)
        self.check_rewards_apply(self.rewards)
        if rl.reward_model and reward_model is None and (why := _reward_run_error(rl.reward_model)):
            raise ConfigError(f"rl.reward_model={rl.reward_model!r}: {why}")
        self.critic_cfg: Config | None = None  # the critic's run config (its model shape), set by prepare_model

    def _load_reward_model(self) -> None:
        """The frozen scorer from rl.reward_model, after checking it speaks the policy's tokenizer."""
        rl = self.cfg.rl
        if self.reward_model is None and rl.reward_model:
            from scratchlm.shards.prepare import tokenizer_hash
            from scratchlm.runs import load_run
            from scratchlm.runs import check_same_tokenizer

            check_same_tokenizer(rl.reward_model, self.cfg.train.data, flag="rl.reward_model")
            init = self.cfg.train.init_from
            mine, theirs = Path(init or "") / "tokenizer.json", Path(rl.reward_model) / "tokenizer.json"
            if init and mine.exists() and theirs.exists() and tokenizer_hash(mine) != tokenizer_hash(theirs):
                raise ConfigError(f"rl.reward_model={rl.reward_model}: its tokenizer.json is not the one of the "
                                  f"--init-from run {init}; the reward model must read the policy's token ids")
            self.reward_model, _, self.critic_cfg = load_run(rl.reward_model)
        if self.reward_model is not None:
            self.reward_model.eval().requires_grad_(False)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """ActorCritic(policy = `model` with LoRA when configured, critic from the reward run or from `model`)."""
        self._load_init(need_reference=self.cfg.rl.kl_coef > 0)
        self._load_reward_model()
        if self.reward_model is not None:
            rv, pv = int(self.reward_model.config.vocab_size), int(model.config.vocab_size)
            if rv != pv:
                raise ConfigError(f"ppo: the reward model's vocabulary has {rv} tokens, the policy's {pv}: they must "
                                  "share the tokenizer")
            critic = ValueModel(copy.deepcopy(self.reward_model.lm))
            if self.cfg.rl.whiten_scores:  # the head's scale is the raw scores', not the whitened ones'
                nn.init.zeros_(critic.head.weight)
            else:
                critic.head.weight.data.copy_(self.reward_model.head.weight)
        else:
            critic = ValueModel(copy.deepcopy(model))  # before LoRA: the critic trains its whole trunk
            nn.init.zeros_(critic.head.weight)
        critic.requires_grad_(True)
        if self.critic_cfg is None:
            self.critic_cfg = self.cfg
        return ActorCritic(super().prepare_model(model), critic, self.cfg.rl.critic_lr_scale)

    def setup(self, info: Any, policy: nn.Module | None = None) -> None:
        """The loop hands over the ActorCritic; rollouts sample with its policy."""
        super().setup(info, policy)
        self.actor_critic = policy
        self.policy = policy.policy if isinstance(policy, ActorCritic) else policy

    def frozen_models(self) -> list[nn.Module]:
        return super().frozen_models() + ([self.reward_model] if self.reward_model is not None else [])

    # -- rollouts -------------------------------------------------------------------------------------
    @torch.no_grad()
    def _scores(self, s: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The score of each completion [N·G]: the reward model at the last token of prompt + completion, or the
        weighted rule rewards."""
        if self.reward_model is None:
            return self.score(self.rewards, s)
        G = self.cfg.rl.num_generations
        newline = self.tokenizer.encode("\n")
        # A reply that stopped ends as the reward model was trained on chat turns: <|im_end|> then the newline.
        seqs = [[int(t) for t in s.prompts[i // G].ids] + c + (newline if stop else [])
                for i, (c, stop) in enumerate(zip(s.completions, s.stopped))]
        return score_ids(self.reward_model, seqs), {}

    @torch.no_grad()
    def rollout(self, indices: list[int], seed: int) -> Batch:
        """Samples, scores, old log-probs / reference log-probs / values, KL-shaped rewards, GAE: one micro-batch."""
        rl, G = self.cfg.rl, self.cfg.rl.num_generations
        s = self.sample(self.policy, indices, seed)
        scores, stats = self._scores(s)
        stopped = torch.tensor(s.stopped)
        scores = scores - rl.missing_eos_penalty * (~stopped).float()  # TRL: a reply that never ended loses this much
        raw = scores
        if rl.whiten_scores and scores.numel() > 1:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        rows = [([int(t) for t in s.prompts[i // G].ids], c) for i, c in enumerate(s.completions)]
        batch = rows_batch(rows, self.cfg.model.max_seq_len)
        mask = (batch["targets"] != IGNORE).float()  # [B, T]
        old_logp = self.logprobs(self.policy, batch)
        ref_logp = self.logprobs(self.reference, batch) if self.reference is not None else old_logp
        critic = self.actor_critic.critic  # in the loop's mode, as the policy is for old_logp
        old_values = critic.values(batch["input_ids"].to(next(critic.parameters()).device)).cpu() * mask
        rewards = kl_shaped_rewards(scores, old_logp, ref_logp, mask, rl.kl_coef)  # [B, T]
        adv, returns = gae(rewards, old_values, mask, rl.gamma, rl.lam)
        kl = ((old_logp - ref_logp) * mask).sum(1)  # [B]: each sequence's sampled-token KL to the reference
        non_score = -rl.kl_coef * kl
        stats.update({"objective/kl": float(kl.mean()), "objective/entropy": float((-old_logp * mask).sum(1).mean()),
                      "objective/non_score_reward": float(non_score.mean()),
                      "objective/rlhf_reward": float((raw + non_score).mean()),
                      "objective/scores": float(raw.mean()),
                      "val/num_eos_tokens": float(stopped.sum()),
                      "completion_length": float(sum(len(c) for c in s.completions) / len(s.completions))})
        batch.update(old_logp=old_logp, old_values=old_values, advantages=whiten(adv, mask), returns=returns,
                     stats=stats)
        return batch

    # -- the loss -------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Clipped policy loss + vf_coef · clipped value loss over completion tokens; TRL's PPO metrics."""
        rl = self.cfg.rl
        x, y = batch["input_ids"], batch["targets"]
        logp, values = model(x, y)  # [B, T] each: one forward of the ActorCritic (through DDP/FSDP when wrapped)
        mask = (y != IGNORE).to(logp.dtype)
        old_logp, old_v, R = batch["old_logp"], batch["old_values"], batch["returns"]
        pg = policy_loss(logp, old_logp, batch["advantages"], mask, rl.eps_low, rl.eps_high, "dapo")
        vf = value_loss(values, old_v, R, mask, rl.cliprange_value)
        n = mask.sum().clamp(min=1)
        with torch.no_grad():
            v, d = values.detach(), (logp.detach() - old_logp)
            v_clipped = old_v + (v - old_v).clamp(-rl.cliprange_value, rl.cliprange_value)
            vf_clip = ((v_clipped - R) ** 2 > (v - R) ** 2).float()  # the clipped term was the larger one
            metrics = {**batch["stats"], "loss/policy": float(pg.loss.detach()), "loss/value": float(vf.detach()),
                       "policy/approxkl": float(0.5 * (d**2 * mask).sum() / n), "policy/clipfrac": pg.clip_fraction,
                       "val/clipfrac": float((vf_clip * mask).sum() / n), "val/mean": float((v * mask).sum() / n),
                       "val/ratio": float((d.exp() * mask).sum() / n),
                       "entropy": float(-(logp.detach() * mask).sum() / n)}  # sampled-token estimate of −E[log π]
        return pg.loss + rl.vf_coef * vf, metrics

    # -- the run folder -------------------------------------------------------------------------------
    def save_final(self, run_dir: Path, model: nn.Module, cfg: Config, tokenizer_dir: str | Path | None) -> None:
        """The policy as the run's model (chat, eval and export open it); the critic in critic/, a reward-model run
        folder (its trunk and head, read at the last token by `load_run`) that can start another PPO run."""
        from scratchlm.runs import save_run

        save_run(run_dir, model.policy, cfg, tokenizer_dir)
        ccfg = copy.deepcopy(self.critic_cfg or cfg)
        ccfg.lora.rank = 0
        ccfg.train.objective = "reward"
        save_run(Path(run_dir) / CRITIC_DIR, model.critic, ccfg, tokenizer_dir)
