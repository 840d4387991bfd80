"""Fold a LoRA run's adapters into its base weights and write a plain run folder (`scratchlm lora merge`)."""

from __future__ import annotations

from pathlib import Path


def merge_run(run: str | Path, out: str | Path) -> Path:
    """Load an adapter run (base + adapters), merge the adapters into the weights, save a full-model run."""
    from scratchlm.model.lora import merge_lora
    from scratchlm.runs import load_run, run_kind, save_run

    run, out = Path(run), Path(out)
    if run_kind(run) != "adapter":
        raise ValueError(f"{run}: not a LoRA run (it has model.safetensors and no adapter_config.json)")
    if out.resolve() == run.resolve():
        raise ValueError(f"--out {out}: choose a new folder; the adapter run stays as it is")
    model, _, cfg = load_run(run)

    merge_lora(model)
    cfg.lora.rank, cfg.lora.base = 0, ""  # the merged run is a whole model
    return save_run(out, model, cfg, tokenizer_dir=run)
