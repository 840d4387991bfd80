"""Logit distillation in the one loop: the SFT objective's data and targets, plus a frozen teacher run whose
temperature-softened distribution the student matches (Hinton et al. 2015):

    loss = α · T² · KL + (1 − α) · CE(student, data targets)

with KL(p_teacher ‖ p_student) ("forward", mode-covering: the student spreads over everything the teacher finds
likely) or KL(p_student ‖ p_teacher) ("reverse", mode-seeking, as MiniLLM argues for generation), both over
softmax(z / T). T² keeps the gradient scale of the soft term independent of T. Teacher and student may differ
in size but must share the tokenizer: the same ids must mean the same tokens.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.config import Config, ConfigError
from scratchlm.engine.sampling import SamplingParams
from scratchlm.train.objectives import IGNORE, SFT, Batch, _forward, _parts


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, kind: str = "forward") -> torch.Tensor:
    """T² · KL between temperature-softened teacher and student logits [N, V], mean over the N positions."""
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    if kind == "forward":  # Σ p_t (log p_t − log p_s)
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    elif kind == "reverse":  # Σ p_s (log p_s − log p_t)
        kl = (log_s.exp() * (log_s - log_t)).sum(-1)
    else:
        raise ValueError(f"kd_loss: kind={kind!r}; choose forward or reverse")
    return kl.mean() * temperature**2


class Distill(SFT):
    """SFT data, loss mixed with the teacher's softened distribution at every counted position."""

    name = "distill"

    def __init__(self, cfg: Config, shards: Any = None, val_shards: Any = None, teacher: nn.Module | None = None) -> None:
        super().__init__(cfg, shards, val_shards)
        self.teacher = teacher

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The teacher run is loaded (frozen) after checking it shares the data's tokenizer and the vocabulary."""
        dc = self.cfg.distill
        if self.teacher is None:
            if not dc.teacher:
                raise ConfigError("distill needs a teacher: --teacher RUN (or --set distill.teacher=RUN)")
            from scratchlm.runs import check_same_tokenizer, load_run

            check_same_tokenizer(dc.teacher, self.cfg.train.data, flag="--teacher")
            self.teacher, _, _ = load_run(dc.teacher)
        tv, sv = int(self.teacher.config.vocab_size), int(model.config.vocab_size)
        if tv != sv:
            raise ConfigError(f"distill: the teacher's vocabulary has {tv} tokens, the student's {sv}: they must share "
                              "the tokenizer (model.vocab_size)")
        self.teacher.eval().requires_grad_(False)
        return super().prepare_model(model)

    def frozen_models(self) -> list[nn.Module]:
        return [self.teacher] if self.teacher is not None else []

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """α · T² · KL(teacher, student) + (1 − α) · CE at the counted positions; both parts as metrics."""
        dc = self.cfg.distill
        out = _forward(model, batch)  # logits [N, V] at the N counted positions
        if int((batch["targets"] != IGNORE).sum()) == 0:
            return out.logits.sum() * 0.0, {"kd_loss": 0.0}
        with torch.no_grad():
            teacher_logits = _forward(self.teacher, batch).logits  # the same N positions (same targets)
        kd = kd_loss(out.logits, teacher_logits, dc.temperature, dc.kl)
        loss = dc.alpha * kd + (1 - dc.alpha) * out.loss
        return loss, dict(_parts(out), kd_loss=float(kd.detach()))


def teacher_answers(teacher_run: str | Path, prompts_file: str | Path, out_file: str | Path, samples: int = 1,
                    params: SamplingParams | None = None, check: bool = False) -> dict[str, int]:
    """Sequence-level distillation data: the teacher's answers (with their <think> traces) to the prompts of a
    JSON-lines file ({"prompt": messages or text, ...other columns}), written as SFT conversations
    ({"conversations": prompt + [assistant answer], ...columns}). Sample k uses `params` (default greedy, 128 new
    tokens, seed 0) with seed + k. With `check`, only answers that
    `answers.check_answer` accepts are kept (rejection sampling, as R1's distillation data was filtered);
    rows without "answer"/"task" columns are then an error naming file:line. Returns counts."""
    from scratchlm.data.clean import clean_messages
    from scratchlm.data.jsonl import iter_prompt_records
    from scratchlm.data.answers import check_answer
    from scratchlm.engine.offline import LLM
    from scratchlm.runs import load_run

    params = params or SamplingParams(temperature=0.0, max_new_tokens=128, seed=0)
    rows = []
    for n, msgs, cols in iter_prompt_records(Path(prompts_file).read_text(encoding="utf-8").splitlines(), prompts_file):
        if check and not (isinstance(cols.get("answer"), str) and isinstance(cols.get("task"), str)):
            raise ValueError(f"{prompts_file}:{n}: --check needs \"answer\" and \"task\" columns to grade the teacher")
        rows.append((clean_messages(msgs), cols))
    # the prompts are read first: a bad line is reported before the teacher's weights load
    model, tok, _ = load_run(teacher_run)
    if tok is None:
        raise ValueError(f"{teacher_run}: no tokenizer.json; the teacher must be a run folder with its tokenizer")
    engine = LLM(model, tok)
    budget = int(model.config.max_seq_len) - params.max_new_tokens
    ids = [list(tok.encode_chat(m, add_generation_prompt=True)[0]) for m, _ in rows]
    keep = [i for i, x in enumerate(ids) if len(x) <= budget]
    counts = {"prompts": len(rows), "too_long": len(rows) - len(keep), "answers": 0, "kept": 0}
    out = []
    for s in range(samples):
        sample_params = dataclasses.replace(params, seed=(params.seed or 0) + s)
        for i, gen in zip(keep, engine.generate([ids[i] for i in keep], sample_params)):
            msgs, cols = rows[i]
            text = tok.decode(gen, skip_special_tokens=True).strip()
            counts["answers"] += 1
            if check and not check_answer(cols["task"], text, cols["answer"]):
                continue
            out.append({"conversations": msgs + [{"role": "assistant", "content": text}], **cols})
    counts["kept"] = len(out)
    tmp = Path(str(out_file) + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    tmp.replace(out_file)  # atomic: a half-written file never looks finished
    return counts
