"""Run folders: where a trained model lives, and how any later stage loads it.

A run folder holds config.toml, tokenizer.json + tokenizer_config.json, metrics.jsonl, loss.png,
checkpoints/step-N/ and its weights, by kind (`run_kind`):
- "model": model.safetensors, the whole model;
- "adapter": adapter_config.json + adapter_model.safetensors (PEFT's layout) over the base run named by
  config.toml's lora.base; `load_run` loads the base and puts the adapters on it;
- a reward model (train.objective = "reward"): model.safetensors of the trunk (`lm.*`) and its score head
  (`head.weight`); `load_run` returns a `model.reward.RewardModel`;
- a quantized run (config.toml's quant.method, written by `scratchlm quantize`): model.safetensors holds int8
  weights with their scales (`*.qweight`, `*.scales`); `load_run` builds model/quant.py's linears for them.
Weights are only ever read with safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from scratchlm.config import Config, ConfigError, load_run_config

if TYPE_CHECKING:  # pragma: no cover
    from scratchlm.tokenizer.bpe import Tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """{alias: canonical} for parameters that are the same tensor under two names (tied embeddings)."""
    seen: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases[name] = seen[id(p)]
        else:
            seen[id(p)] = name
    return aliases


def save_weights(state: dict[str, torch.Tensor], path: str | Path, aliases: dict[str, str] | None = None) -> None:
    """Write a state dict as safetensors, storing tied tensors once (aliases dropped), fsynced."""
    aliases = aliases or {}
    out = {k: v.detach().to("cpu").contiguous() for k, v in state.items() if k not in aliases}
    path = Path(path)
    save_file(out, str(path), metadata={"format": "pt"})
    _fsync(path)


def load_weights(model: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load safetensors weights into `model` (tied names restored from the model's own ties)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file")
    state = load_file(str(path))
    for alias, canonical in tied_aliases(model).items():
        if alias not in state and canonical in state:
            state[alias] = state[canonical]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(
            f"{path}: weights do not match the model (missing: {missing[:5]}{'...' if len(missing) > 5 else ''}; "
            f"unexpected: {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}) — is the config the same?"
        )


def save_model(model: torch.nn.Module, path: str | Path) -> None:
    """Save a model's weights to safetensors (tied weights stored once)."""
    save_weights(model.state_dict(), path, tied_aliases(model))


def build_model(cfg: Config) -> torch.nn.Module:
    """A freshly initialised Transformer, seeded by train.seed so every process builds the same one."""
    from scratchlm.model.transformer import Transformer

    torch.manual_seed(cfg.train.seed)
    return Transformer(cfg.model)


def copy_tokenizer(src_dir: str | Path, dst_dir: str | Path) -> bool:
    """Copy tokenizer.json + tokenizer_config.json between folders; False when `src_dir` has none."""
    src, dst = Path(src_dir), Path(dst_dir)
    if not (src / "tokenizer.json").exists():
        return False
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).exists() and (src / name).resolve() != (dst / name).resolve():
            shutil.copyfile(src / name, dst / name)
    return True


def save_run(run_dir: str | Path, model: torch.nn.Module, cfg: Config, tokenizer_dir: str | Path | None = None) -> Path:
    """Write the final model of a run: model.safetensors (or, with LoRA adapters, only the adapters in
    PEFT's layout), config.toml and the tokenizer files."""
    from scratchlm.model.lora import lora_modules, save_adapter

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if lora_modules(model):
        lc = cfg.lora
        save_adapter(model, run_dir, lc.rank, lc.alpha, lc.dropout, base_model=lc.base)
    else:
        tmp = run_dir / "model.safetensors.tmp"
        save_model(model, tmp)
        tmp.replace(run_dir / "model.safetensors")  # atomic: a reader never sees half a file
    cfg.save(run_dir / "config.toml")
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, run_dir)
    return run_dir


def load_run(run_dir: str | Path, device: str | torch.device | None = None) -> tuple[Any, "Tokenizer | None", Config]:
    """(model in eval mode, tokenizer or None, config) from a run folder."""
    from scratchlm.model.transformer import Transformer

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    cfg = load_run_config(run_dir)
    model = Transformer(cfg.model)
    if cfg.train.objective == "reward":  # the trunk with a score head (model/reward.py)
        from scratchlm.model.reward import RewardModel

        model = RewardModel(model)
    if cfg.quant.method != "none":  # int8 weights and scales (scratchlm quantize): the linears to load them into
        from scratchlm.model.quant import quantized_skeleton

        quantized_skeleton(model, cfg.quant)
    if run_kind(run_dir) == "adapter":
        from scratchlm.model.lora import load_adapter

        base = Path(cfg.lora.base)
        if not (base / "model.safetensors").exists():
            raise FileNotFoundError(f"{run_dir}: its adapters sit on the base run {base} (config.toml lora.base), "
                                    "which has no model.safetensors; restore it or set lora.base to where it is")
        load_weights(model, base / "model.safetensors")
        load_adapter(model, run_dir)
    else:
        weights = run_dir / "model.safetensors"
        if not weights.exists():
            raise ConfigError(f"{run_dir}: run has no model.safetensors yet (still training, or interrupted? "
                              f"resume with --resume)")
        load_weights(model, weights)
    if device is not None:
        model.to(device)
    model.eval()
    tokenizer = None
    if (run_dir / "tokenizer.json").exists():
        from scratchlm.tokenizer.bpe import Tokenizer

        tokenizer = Tokenizer.load(run_dir)
    return model, tokenizer, cfg


def refuse_quantized(run_dir: str | Path, what: str) -> None:
    """ConfigError when `run_dir` is a quantized run (`scratchlm quantize`): `what` (training from it, exporting it)
    needs float weights, which its int8/int4 linears no longer hold; the message names the float run it came from."""
    cfg = load_run_config(run_dir)
    if cfg.quant.method != "none":
        source = f"the float run it came from, {cfg.quant.source}" if cfg.quant.source else "the float run it came from"
        raise ConfigError(f"{run_dir} is a quantized run (quant.method={cfg.quant.method!r}); {what} needs float "
                          f"weights: use {source}")


def run_kind(run_dir: str | Path) -> str:
    """What a run folder's weights are: "model" (model.safetensors) or "adapter" (LoRA over a base run)."""
    from scratchlm.model.lora import ADAPTER_CONFIG

    return "adapter" if (Path(run_dir) / ADAPTER_CONFIG).exists() and not (Path(run_dir) / "model.safetensors").exists() else "model"


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------
# metrics.jsonl: one JSON object per logged step, appended by the training loop, read by plots and reports

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's metrics.jsonl in order ([] when it has none); a bad line is an error naming file:line."""
    from scratchlm.data.jsonl import iter_jsonl

    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [rec for _, rec in iter_jsonl(path.read_text(encoding="utf-8").splitlines(), path)]


def write_metrics(run_dir: str | Path, records: list[dict[str, Any]]) -> None:
    """Replace a run's metrics.jsonl with `records` (an empty list starts a fresh log)."""
    (Path(run_dir) / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one record to a run's metrics.jsonl."""
    with (Path(run_dir) / METRICS_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def check_same_tokenizer(init_from: str | Path, data: str | Path, flag: str = "--init-from") -> None:
    """Refuse to continue (or distil from) a run on data prepared with another tokenizer (its ids would mean other
    tokens); `flag` names the option that gave the run."""
    from scratchlm.shards.prepare import tokenizer_hash

    tok, meta = Path(init_from) / "tokenizer.json", Path(data) / "meta.json" if data else None
    if meta is None or not tok.exists() or not meta.exists():
        return
    data_hash = json.loads(meta.read_text(encoding="utf-8")).get("tokenizer_hash")
    run_hash = tokenizer_hash(tok)
    if data_hash and data_hash != run_hash:
        raise ConfigError(f"{flag} {init_from}: its tokenizer.json (sha256 {run_hash[:16]}…) is not the one "
                          f"{meta} was prepared with (sha256 {data_hash[:16]}…); prepare the data again with "
                          f"--tokenizer {init_from}")
