"""Training-step throughput: our Transformer vs transformers' LlamaForCausalLM with the same weights.

    python bench/bench_model.py [--preset minimind-26m] [--batch 4] [--seq 256] [--steps 5] [--threads N]

One step = forward + cross-entropy + backward + AdamW step, fp32, on the default device (CPU here). Both
models are timed in alternation in the same process, so the printed ratio (ours / transformers tokens/s)
is comparable even on a busy machine; absolute numbers are not.
"""

from __future__ import annotations

import scratchlm  # noqa: F401  (first: sets OpenMP's wait policy before torch loads it, see scratchlm/__init__.py)

import argparse
import statistics
import time

import torch

from scratchlm.config import load_config
from scratchlm.device import pick_device
from scratchlm.export.hf_mapping import hf_model
from scratchlm.model.transformer import Transformer


def _step_ours(model, opt, ids):
    out = model(ids[:, :-1], targets=ids[:, 1:])
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    return out.loss.item()


def _step_hf(model, opt, ids):
    # Same loss definition: shift by one, mean CE (HF's labels shift internally).
    out = model(input_ids=ids[:, :-1], use_cache=False)
    logits = out.logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    """Run the benchmark and print tokens/s for both and their ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pick_device("auto")
    torch.manual_seed(0)
    cfg = load_config(args.preset).model
    ours = Transformer(cfg).to(device).train()
    hf = hf_model(ours.cpu()).to(device).train()
    ours.to(device)
    hf.config._attn_implementation = "sdpa"
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)
    opts = {
        "ours": (ours, torch.optim.AdamW(ours.parameters(), lr=1e-4), _step_ours),
        "transformers": (hf, torch.optim.AdamW(hf.parameters(), lr=1e-4), _step_hf),
    }
    # Same weights → same first loss (a check that we compare like with like).
    first = {name: step(m, o, ids) for name, (m, o, step) in opts.items()}
    print(f"first-step loss: ours {first['ours']:.5f}  transformers {first['transformers']:.5f}")
    for _ in range(args.warmup - 1):
        for m, o, step in opts.values():
            step(m, o, ids)
    times: dict[str, list[float]] = {name: [] for name in opts}
    for _ in range(args.steps):
        for name, (m, o, step) in opts.items():  # alternate so load changes hit both alike
            _sync(device)
            t0 = time.perf_counter()
            step(m, o, ids)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    tokens = args.batch * args.seq
    tps = {name: tokens / statistics.median(ts) for name, ts in times.items()}
    print(f"{args.preset} ({ours.num_params() / 1e6:.1f}M params), batch {args.batch}x{args.seq}, fp32, "
          f"{device.type}, {torch.get_num_threads()} threads, median of {args.steps} steps")
    for name, v in tps.items():
        print(f"  {name:13s} {v:10.0f} tokens/s   ({statistics.median(times[name]) * 1e3:.0f} ms/step)")
    print(f"  ratio ours/transformers: {tps['ours'] / tps['transformers']:.2f}x")


if __name__ == "__main__":
    main()
