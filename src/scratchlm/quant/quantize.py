"""`scratchlm quantize`: a float run folder → a quantized run folder that every consumer of runs opens.

The work is model/quant.py's (the quantized linears); this module checks the run, converts it and writes the new
folder: model.safetensors with int8 weights and scales, config.toml with `[quant] method` and the source run, and
the tokenizer files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from scratchlm.config import ConfigError


def quantize_run(run_dir: str | Path, out_dir: str | Path, method: str = "int8", alpha: float = 0.5,
                 calib_tokens: int = 4096, calib_texts: Sequence[str] | None = None, group_size: int = 64) -> Path:
    """Quantize the float run at `run_dir` with `method` and write it as a run folder at `out_dir`.

    smoothquant and awq calibrate on `calib_tokens` tokens of `calib_texts` (default: the corpus' train split);
    smoothquant migrates `alpha` of the activations' range into the weights, awq searches its α per group of
    linears and stores int4 weights in groups of `group_size`."""
    from scratchlm.model.quant import check_quantizable, quantize_model, smooth_model
    from scratchlm.runs import load_run, run_kind, save_run
    from scratchlm.config import load_run_config

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = load_run_config(run_dir)
    if cfg.quant.method != "none":
        raise ConfigError(f"{run_dir}: already quantized (config.toml quant.method={cfg.quant.method!r}, from "
                          f"{cfg.quant.source or 'an unknown run'}); quantize the float run it came from")
    if run_kind(run_dir) == "adapter":
        raise ConfigError(f"{run_dir}: a LoRA adapter run (lora.base={cfg.lora.base}); merge it first "
                          "(scratchlm lora merge) and quantize the merged run")
    if cfg.train.objective == "reward":
        raise ConfigError(f"{run_dir}: train.objective='reward' (a reward model with a score head) cannot be "
                          "quantized; only language-model runs")
    check_quantizable(cfg.model, method, group_size if method == "awq" else 0)
    if out_dir.resolve() == run_dir.resolve():
        raise ConfigError(f"--out {out_dir} is the run itself: write the quantized run to a new folder")
    model, tokenizer, cfg = load_run(run_dir, device="cpu")
    if method in ("smoothquant", "awq"):
        from scratchlm.model.quant import linear_names
        from scratchlm.quant.calibrate import calibration_ids, input_stats

        if tokenizer is None:
            raise ConfigError(f"{run_dir}: no tokenizer.json; {method} calibrates on text and needs the run's tokenizer")
        ids = calibration_ids(tokenizer, calib_tokens, calib_texts)
        stats = input_stats(model, ids, linear_names(model), seq_len=min(256, cfg.model.max_seq_len))
        if method == "smoothquant":
            smooth_model(model, {n: st.abs_max for n, st in stats.items()}, alpha)
        else:
            from scratchlm.quant.awq import apply_awq

            chosen = apply_awq(model, stats, group_size)
            alpha = round(sum(chosen.values()) / len(chosen), 4)
            cfg.quant.group_size = group_size
        cfg.quant.alpha, cfg.quant.calib_tokens = alpha, len(ids)
    with torch.no_grad():
        quantize_model(model, method, cfg.quant.group_size)
    cfg.quant.method = method
    cfg.quant.source = str(run_dir.resolve())
    return save_run(out_dir, model, cfg, tokenizer_dir=run_dir)


def weight_bytes(run_dir: str | Path) -> int:
    """The size of a run's model.safetensors in bytes."""
    return (Path(run_dir) / "model.safetensors").stat().st_size
