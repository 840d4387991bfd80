"""`scratchlm lora merge RUN --out DIR`: fold a LoRA run's adapters into its base and write a plain run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


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


def _cmd_merge(args: argparse.Namespace) -> int:
    out = merge_run(args.run, args.out)
    print(f"merged {args.run} into {out}/model.safetensors")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register `scratchlm lora merge`."""
    p = subparsers.add_parser("lora", help="LoRA adapter runs: merge into a plain run")
    sub = p.add_subparsers(dest="lora_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    m = sub.add_parser("merge", help="fold a LoRA run's adapters into its base weights and write a plain run folder")
    m.add_argument("run", help="the LoRA run folder (adapter_config.json + adapter_model.safetensors)")
    m.add_argument("--out", required=True, help="folder for the merged run (model.safetensors + config + tokenizer)")
    m.set_defaults(func=_cmd_merge)
