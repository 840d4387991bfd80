"""Train one stage into a run folder: resolve its config, check the tokenizer, build model and objective, run the loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scratchlm.config import Config, ConfigError, load_config, load_run_config, read_toml, upgrade_saved_config

if TYPE_CHECKING:  # the loop imports torch: only the commands that train load it, not `--help`
    from scratchlm.train.loop import TrainResult


def resolve_train_config(
    objective: str,
    preset: str | None,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    data: str | None = None,
    init_from: str | Path | None = None,
    resume: bool = False,
) -> Config:
    """The run's config: preset (or, on --resume without --config, the run's own config.toml),
    the model shape of --init-from, then --data and --set overrides."""
    base: dict[str, Any] = {"train": {"objective": objective}}
    if init_from is not None:
        # the weights decide the shape: a preset's model section must not silently disagree with them
        base["model"] = load_run_config(init_from).to_dict()["model"]
    if data is not None:
        base["train"]["data"] = str(data)
    if preset is None and resume and out is not None and (Path(out) / "config.toml").exists():
        saved = upgrade_saved_config(read_toml(Path(out) / "config.toml"))
        saved.setdefault("train", {}).update(base["train"])
        return load_config(None, overrides, base=saved)
    return load_config(preset or "tiny", overrides, base=base)


def find_tokenizer_dir(cfg: Config, init_from: str | Path | None, explicit: str | Path | None) -> Path | None:
    """Where the run's tokenizer files come from: --tokenizer, the --init-from run, or the data's meta."""
    cands: list[Path] = []
    if explicit:
        if not (Path(explicit) / "tokenizer.json").exists():
            raise FileNotFoundError(f"--tokenizer {explicit}: no tokenizer.json there")
        return Path(explicit)
    if init_from:
        cands.append(Path(init_from))
    if cfg.train.data:
        data = Path(cfg.train.data)
        cands.append(data)
        meta = data / "meta.json"
        if meta.exists():
            tok = json.loads(meta.read_text(encoding="utf-8")).get("tokenizer_dir") or json.loads(
                meta.read_text(encoding="utf-8")).get("tokenizer")
            if isinstance(tok, str):
                cands.append(Path(tok))
    for c in cands:
        if (c / "tokenizer.json").exists():
            return c
    return None


def train_stage(
    objective: str,
    out: str | Path,
    preset: str | None = None,
    overrides: list[str] | None = None,
    data: str | None = None,
    init_from: str | Path | None = None,
    resume: bool = False,
    tokenizer: str | Path | None = None,
    stop_at_step: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one stage (`pretrain`, `sft`, ...) into run folder `out`."""
    from scratchlm.runs import build_model, check_same_tokenizer
    from scratchlm.train.loop import train
    from scratchlm.train.objectives import make_objective

    from scratchlm.stages import get_stage

    if get_stage(objective).needs_init and init_from is None and not resume:
        raise ConfigError(f"scratchlm train {objective} starts from a trained model: pass --init-from RUN "
                          "(e.g. an SFT run)")
    cfg = resolve_train_config(objective, preset, overrides, out, data, init_from, resume)
    if init_from is not None and not resume:
        check_same_tokenizer(init_from, cfg.train.data)
    tok_dir = find_tokenizer_dir(cfg, init_from, tokenizer)
    obj = make_objective(cfg)
    model = build_model(cfg)
    return train(cfg, obj, out, model, init_from=None if resume else init_from, resume=resume,
                 tokenizer_dir=tok_dir, stop_at_step=stop_at_step, progress=progress)
