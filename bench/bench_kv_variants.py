"""Which int8 KV cache to ship, decided on the dev split: variants of engine/paged_cache.py's int8 pool patched in
(one child process each) and measured with bench_kv.py's chat agreement, raw-text agreement and teacher-forced
perplexity, KL divergence and top-1 agreement through the pool.

    python bench/bench_kv_variants.py [--demo /work/runs/demo0] [--split val] [--results docs/results/kv_int8_dev.json]

Variants (the shipped one is "asym bf16 + fresh"; the others are the pool's int8 path patched):
- sym: one fp32 scale max|x|/127 per slot and head, every row attended as read back (what shipped before);
- sym + fresh: the same, a forward's own new rows attended exact (not read back);
- asym fp32: midpoint and scale (max−min)/254 per slot and head in fp32 (8 bytes), read back;
- asym fp32 + fresh;
- asym bf16 + fresh: the shipped pool (midpoint and scale in bf16: 4 bytes, as sym's one fp32 scale);
- keys exact: values as shipped, keys kept in fp32 (how much of the loss is the keys');
- newest block exact (emulated): shipped, plus every row's last, partial block attended exact (a KIVI-style fp32
  residual of up to one block per sequence);
- KIVI (emulated): keys per channel over each block of 16 tokens (symmetric, its scale from the whole block),
  values as shipped, every row's partial block exact.
The emulations keep an fp32 shadow of the pool (no memory saved): they measure what the scheme would give, to decide
whether building it is worth it.
"""

from __future__ import annotations

import scratchlm  # noqa: F401  (first: sets OpenMP's wait policy before torch loads it)

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

VARIANTS = ["sym", "sym + fresh", "asym fp32", "asym fp32 + fresh", "asym bf16 + fresh", "keys exact",
            "newest block exact (emulated)", "KIVI (emulated)"]


def patch(variant: str) -> None:
    """Replace the int8 pool's write / read / fresh rows by `variant`'s."""
    import scratchlm.engine.paged_cache as pc

    Pool, Batch = pc.PagedKVCache, pc.PagedBatch
    init, write, binit, bread = Pool.__init__, Pool.write, Batch.__init__, Batch._read
    fp32_scales = variant.startswith(("sym", "asym fp32"))
    shadow = variant in ("keys exact", "newest block exact (emulated)", "KIVI (emulated)")

    def pool_init(self, *a, **k):
        init(self, *a, **k)
        if self.int8 and fp32_scales:
            self.scales = [tuple(t.float() for t in layer) for layer in self.scales]
        self.shadow = [tuple(torch.zeros(t.shape) for t in layer) for layer in self.layers] if shadow else None

    def pool_write(self, layer, which, slots, x):
        if not self.int8 or not fp32_scales:
            if self.int8 and shadow:
                self.shadow[layer][which].index_copy_(0, slots, x.detach().float())
            return write(self, layer, which, slots, x)
        x = x.detach().float()
        hi, lo = x.amax(-1), x.amin(-1)
        if variant.startswith("sym"):
            mid, scale = torch.zeros_like(hi), x.abs().amax(-1) / 127
        else:
            mid, scale = (hi + lo) / 2, (hi - lo) / 254
        scale = scale.clamp(min=torch.finfo(torch.float32).tiny)
        q = torch.round((x - mid[..., None]) / scale[..., None]).clamp(-127, 127).to(torch.int8)
        self.layers[layer][which].index_copy_(0, slots, q)
        self.scales[layer][which].index_copy_(0, slots, torch.stack((scale, mid), -1))

    def copy_block(self, src, dst, n):
        bs = self.block_size
        for group in (self.layers, self.scales, self.shadow or []):
            for layer in group:
                for t in layer:
                    t[dst * bs: dst * bs + n] = t[src * bs: src * bs + n]

    def batch_init(self, pool, tables, cached, new):
        binit(self, pool, tables, cached, new)
        self.totals = torch.tensor([c + n for c, n in zip(cached, new)])

    def batch_read(self, layer, which, new):
        pool = self.pool
        if not pool.int8:
            return bread(self, layer, which, new)
        if "fresh" in variant or shadow:
            out = bread(self, layer, which, new)
        else:  # read back, no exact own rows
            slots = None if self.span is not None else self.read_slots.reshape(-1)
            out = pool.read(layer, which, self.span, self._S, slots)
        if not shadow:
            return out
        B, S, bs = self.batch_size, self._S, pool.block_size
        rs = self.span + torch.arange(S) if self.span is not None else self.read_slots.reshape(-1)
        exact = pool.shadow[layer][which].index_select(0, rs)
        if variant == "keys exact":
            return exact if which == 0 else out
        pos = torch.arange(S)[None, :]
        valid = pos < self.totals[:, None]
        if variant == "KIVI (emulated)" and which == 0:
            nb = -(-S // bs)
            e = torch.zeros(B, nb * bs, *exact.shape[1:])
            e[:, :S] = exact.view(B, S, *exact.shape[1:]) * valid.view(B, S, *[1] * (exact.dim() - 1))
            e = e.view(B, nb, bs, *exact.shape[1:])
            sc = (e.abs().amax(2, keepdim=True) / 127).clamp(min=1e-30)
            out = (torch.round(e / sc) * sc).view(B, nb * bs, *exact.shape[1:])[:, :S].reshape(exact.shape)
        recent = ((pos >= ((self.totals - 1) // bs * bs)[:, None]) & valid).reshape(-1)
        return torch.where(recent.view(-1, *[1] * (exact.dim() - 1)), exact, out)

    Pool.__init__, Pool.write, Pool.copy_block = pool_init, pool_write, copy_block
    Batch.__init__, Batch._read = batch_init, batch_read


def measure(variant: str, demo: Path, split: str) -> dict:
    """bench_kv's chat agreement, raw-text agreement and teacher-forced pool measures under `variant`."""
    from bench_kv import chat_agreement, chat_prompts, pool_perplexity
    from bench_quant import kv_agreement, validation_ids
    from scratchlm.demo.settings import DemoSettings
    from scratchlm.runs import load_run

    patch(variant)
    new = DemoSettings().max_new_tokens
    sft, tok, _ = load_run(demo / "sft")
    chat = chat_agreement(sft, tok, chat_prompts(tok, demo / "data" / "synth" / f"prompt_{split}.jsonl", new,
                                                 sft.config.max_seq_len))
    pre, ptok, _ = load_run(demo / "pretrain")
    ids = validation_ids(ptok, 24 * 128 + 32)
    raw = kv_agreement(pre, [ids[i * 128: i * 128 + 32] for i in range(24)], 64)
    L = min(256, pre.config.max_seq_len)
    return {"chat": chat, "raw_text": raw, "teacher_forced": pool_perplexity(pre, ids, L, min(12, len(ids) // L))}


def main() -> None:
    """Each variant in its own child process (the patches do not mix); print a table, optionally write it."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default="/work/runs/demo0")
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--variant", default=None, help="(internal) measure one variant, print its JSON")
    ap.add_argument("--results", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.variant:
        print("RESULT " + json.dumps(measure(args.variant, Path(args.demo), args.split)))
        return
    rows = {}
    for v in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--demo", args.demo, "--split", args.split, "--variant", v],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
        rows[v] = r
        a = r["chat"]["all"]
        print(f"{v:32s} chat {a['identical']}/{a['prompts']} ({a['identical_share']:.1%}), raw text "
              f"{r['raw_text']['prompts_equal']:.1%}, perplexity × {r['teacher_forced']['ratio']:.5f}, KL "
              f"{r['teacher_forced']['kl_int8_from_fp32']:.2e}, top-1 {r['teacher_forced']['top1_agreement']:.4f}",
              flush=True)
    if args.results:
        from scratchlm.results import write_results

        summary = Path(args.demo) / "summary.json"  # the demo run's seed
        seed = json.loads(summary.read_text())["settings"]["seed"] if summary.is_file() else None
        write_results(args.results, "kv_int8_dev", {"variants": rows, "shipped": "asym bf16 + fresh"}, seed=seed,
                      split=args.split, notes="variants of the int8 KV pool (bench/bench_kv_variants.py); the demo run's "
                      "SFT model on its dev prompt file, its pretrained model on the corpus' validation text")


if __name__ == "__main__":
    main()
