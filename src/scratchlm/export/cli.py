"""`scratchlm export hf RUN --out DIR`, `scratchlm export gguf RUN --out FILE.gguf` and `scratchlm import hf DIR --out RUN`
(the work is in export/hf.py and export/gguf.py)."""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_export(args: argparse.Namespace) -> int:
    from scratchlm.export.hf import ADAPTER_SUBDIR, export_hf, hf_architecture
    from scratchlm.config import load_run_config
    from scratchlm.runs import run_kind

    out = export_hf(args.run, args.out, merge=args.merge, custom=args.custom, dtype=args.dtype)
    arch = "ScratchLMForCausalLM (needs scratchlm installed)" if args.custom else hf_architecture(load_run_config(args.run).model)
    print(f"wrote {out} ({arch})")
    if run_kind(args.run) == "adapter" and not args.merge:
        print(f"  PEFT adapter in {out / ADAPTER_SUBDIR}: PeftModel.from_pretrained(AutoModelForCausalLM"
              f".from_pretrained('{out}'), '{out / ADAPTER_SUBDIR}')")
    return 0


def _cmd_export_gguf(args: argparse.Namespace) -> int:
    from scratchlm.export.gguf import export_gguf

    out = export_gguf(args.run, args.out, dtype=args.dtype)
    print(f"wrote {out} (GGUF, llama architecture, {args.dtype}): llama-cli -m {out} -cnv")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from scratchlm.export.hf import import_hf

    out = import_hf(args.dir, args.out)
    print(f"wrote run {out}: continue with `scratchlm train STAGE --init-from {out} ...`")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register `scratchlm export hf`, `scratchlm export gguf` and `scratchlm import hf`."""
    from scratchlm.export.gguf import DTYPES as GGUF_DTYPES
    from scratchlm.export.hf import DTYPES

    ex = subparsers.add_parser("export", help="write a run as a transformers folder or a GGUF file")
    sub = ex.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    p = sub.add_parser("hf", help="LlamaForCausalLM / DeepseekV3ForCausalLM folder (+ tokenizer, chat template, "
                                  "generation_config); a LoRA run as base + PEFT adapter")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--merge", action="store_true", help="LoRA run: merge the adapter into the weights")
    p.add_argument("--custom", action="store_true",
                   help="write our registered ScratchLMForCausalLM (any config; loading needs scratchlm)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights' dtype on disk")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("gguf", help="one GGUF file for llama.cpp (llama architecture: dense MHA/GQA configs; "
                                    "tokenizer and chat template embedded; a LoRA run is merged)")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", required=True, help="file to write (FILE.gguf)")
    p.add_argument("--dtype", default="f32", choices=GGUF_DTYPES,
                   help="2-D weights' type (norms stay f32; q8_0 rows not a multiple of 32 fall back to f16)")
    p.set_defaults(func=_cmd_export_gguf)

    im = subparsers.add_parser("import", help="read a transformers folder into a run folder")
    sub = im.add_subparsers(dest="import_format", metavar="FORMAT", required=True)
    p = sub.add_parser("hf", help="a Llama / DeepSeek-V3 (or our exported) folder → run folder "
                                  "every stage can continue from (--init-from)")
    p.add_argument("dir", help="transformers model folder (config.json, weights, tokenizer.json)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.set_defaults(func=_cmd_import)
