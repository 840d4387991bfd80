"""Quantization, measured: fp32 vs our int8 weight-only, SmoothQuant W8A8 and AWQ int4 vs torchao's int8 weight-only
vs llama.cpp (f32 and q8_0 GGUF).

    python bench/bench_quant.py [--run RUN] [--train-seconds 120] [--new 64] [--repeats 3] [--compile] [--profile]
                                [--results docs/results/bench_quant.json]

The model: --run (any float run folder), or else the `minimind-26m` shape (d=512, 8 layers, GQA 8/2, vocab 6400)
trained here for --train-seconds on the built-in corpus (a BPE tokenizer of 6400 trained first, then AdamW on
128-token windows, batch 8), kept in --workdir so a second run skips it. Its weights are then what a briefly
trained model's are, not a random init, so perplexity means something (though the model is far from converged).

For each variant, in one process so that the ratios share the machine's load:
- perplexity on the corpus' validation text, and how often the variant's argmax at a position is fp32's
  (teacher-forced top-1 agreement; llama.cpp's server reports no prompt log-probs, so its rows have neither);
- file size (model.safetensors; torchao's: torch.save of its state dict; the GGUF files);
- decode tokens/s at batch 1, greedy, the same prompt and length: ours through LLMEngine (eager; --compile also
  the compiled decode step), decode only (the time of a 1-token generate, i.e. the prefill, is subtracted);
  llama.cpp's own `predicted_per_second` (decode only) from its server on the same number of threads (with
  ignore_eos it bans end-of-turn tokens, which our engine without a tokenizer emits: the tokens may differ, the
  work per token does not; tests/test_export_gguf.py checks that its tokens are ours);
- the weights-only floor: tokens/s if a step did nothing but read every weight once at the machine's read
  bandwidth (bench/stream.py), for that variant's bytes per weight.
Each is printed as a ratio to fp32 measured in the same run. --results FILE writes them (scratchlm.results).
"""

from __future__ import annotations

import scratchlm  # noqa: F401  (first: sets OpenMP's wait policy before torch loads it, see scratchlm/__init__.py)

import argparse
import json
import math
import statistics
import time
import urllib.request
from pathlib import Path

import torch

from stream import measure_bandwidth  # bench/stream.py, beside this file


def train_brief_run(workdir: Path, seconds: float, preset: str, seed: int = 0) -> Path:
    """A float run of `preset` trained for `seconds` on the built-in corpus (kept in workdir/fp32 once made)."""
    from scratchlm.config import load_config
    from scratchlm.data.corpus import corpus_texts
    from scratchlm.model.transformer import Transformer
    from scratchlm.runs import save_run
    from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer

    run = workdir / "fp32"
    if (run / "model.safetensors").exists():
        return run
    tok_dir = train_tokenizer(workdir / "tokenizer", vocab_size=6400, show_progress=False)
    tok = Tokenizer.load(tok_dir)
    ids = torch.tensor([t for text in corpus_texts("train") for t in tok.encode(text) + [tok.eos_id]])
    cfg = load_config(preset, [f"train.seed={seed}"])
    torch.manual_seed(seed)
    model = Transformer(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    t0, step = time.perf_counter(), 0
    model.train()
    while time.perf_counter() - t0 < seconds:
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 10)  # 10 warmup steps, then flat
        starts = torch.randint(0, len(ids) - 129, (8,), generator=g)
        rows = torch.stack([ids[s: s + 129] for s in starts.tolist()])
        loss = model(rows[:, :-1], targets=rows[:, 1:]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    model.eval()
    print(f"trained {preset} for {step} steps ({time.perf_counter() - t0:.0f} s), last loss {loss.item():.2f}")
    return save_run(run, model, cfg, tok_dir)


def validation_ids(tokenizer, n_tokens: int) -> list[int]:
    """The first n_tokens of the corpus' validation text, documents joined by the end-of-text id."""
    from scratchlm.data.corpus import corpus_texts

    out: list[int] = []
    for text in corpus_texts("validation"):
        out += tokenizer.encode(text) + [tokenizer.eos_id]
        if len(out) >= n_tokens:
            break
    return out[:n_tokens]


@torch.inference_mode()
def perplexity(model, ids: list[int], seq_len: int) -> tuple[float, torch.Tensor]:
    """(exp(mean next-token NLL), the argmax at every position) over consecutive windows of seq_len tokens."""
    x = torch.tensor(ids)
    n = (len(x) - 1) // seq_len
    rows = torch.stack([x[i * seq_len: i * seq_len + seq_len + 1] for i in range(n)])
    nll, count, top1 = 0.0, 0, []
    for b in range(0, n, 8):
        r = rows[b: b + 8]
        out = model(r[:, :-1], targets=r[:, 1:])
        nll += float(out.ce_loss.double()) * r[:, 1:].numel()
        count += r[:, 1:].numel()
        top1.append(out.logits.argmax(-1).flatten())
    return math.exp(nll / count), torch.cat(top1)


def torchao_int8(run: Path):
    """The float run's model with torchao's int8 weight-only quantization applied (every nn.Linear)."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    from scratchlm.runs import load_run

    model = load_run(run)[0]
    quantize_(model, Int8WeightOnlyConfig())
    return model


@torch.inference_mode()
def kv_agreement(model, prompts: list[list[int]], new: int) -> dict[str, float]:
    """Greedy continuations through the int8 KV pool against the fp32 pool: the share of prompts whose `new` tokens
    are all the same, and the share of tokens before the first difference."""
    from scratchlm.engine.llm_engine import LLMEngine
    from scratchlm.engine.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=new)
    want = LLMEngine(model, None).generate(prompts, params)
    got = LLMEngine(model, None, kv_cache_dtype="int8").generate(prompts, params)
    lead = [next((i for i, (a, b) in enumerate(zip(w, g)) if a != b), len(w)) for w, g in zip(want, got)]
    return {"prompts_equal": sum(w == g for w, g in zip(want, got)) / len(prompts),
            "tokens_before_first_difference": sum(lead) / sum(map(len, want)), "prompts": len(prompts)}


def engine_decode(model, prompt: list[int], new: int, compile: bool, kv_cache_dtype: str = "auto"):
    """A function timing one greedy batch-1 decode of `new` tokens (prefill subtracted) → (tok/s, tokens)."""
    from scratchlm.engine.llm_engine import LLMEngine
    from scratchlm.engine.sampling import SamplingParams

    # no tokenizer: no stop id, exactly `new` tokens
    engine = LLMEngine(model, None, max_num_seqs=1, compile=compile, kv_cache_dtype=kv_cache_dtype)
    if compile:
        engine.warmup()
    full, one = SamplingParams(temperature=0.0, max_new_tokens=new + 1), SamplingParams(temperature=0.0, max_new_tokens=1)
    engine.generate([prompt], full)  # first-call costs

    def run() -> tuple[float, list[int]]:
        t0 = time.perf_counter()
        engine.generate([prompt], one)
        t1 = time.perf_counter()
        out = engine.generate([prompt], full)[0]
        t2 = time.perf_counter()
        return new / ((t2 - t1) - (t1 - t0)), out

    return run


class LlamaCpp:
    """llama.cpp's server (the xllamacpp wheel) on one GGUF file, as tests/test_export_gguf.py starts it."""

    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = n_ctx
        params.n_parallel = 1
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.warmup = True
        # f32 KV cache and no flash attention (which rounds q to f16 on a CPU): llama.cpp then computes what we do,
        # so its f32 tokens are ours (tests/test_export_gguf.py), and both read the same KV bytes per step
        params.cache_type_k = params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
        params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.server = xllamacpp.Server(params)
        self.url = self.server.listening_address

    def decode(self, prompt: list[int], new: int) -> tuple[float, list[int]]:
        """(decode tok/s as llama.cpp times it, generated ids) for a greedy continuation of exactly `new` tokens."""
        body = {"prompt": prompt, "n_predict": new, "temperature": 0, "ignore_eos": True, "return_tokens": True,
                "cache_prompt": False}
        req = urllib.request.Request(self.url + "/completion", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            out = json.loads(r.read())
        return float(out["timings"]["predicted_per_second"]), out["tokens"]


def linear_params(model) -> tuple[int, int]:
    """(weights of the matrices a decode step reads once: every linear incl. the head, output rows of them)."""
    from scratchlm.model.quant import Int8Linear

    n = rows = 0
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, Int8Linear)):
            n += m.in_features * m.out_features
            rows += m.out_features
    return n, rows


@torch.inference_mode()
def kernel_times(out_f: int = 1408, in_f: int = 512, repeats: int = 200) -> dict[str, float]:
    """µs per call of one decode-sized matmul (1 row × [out_f, in_f], minimind-26m's w1) by each kernel: why
    Int8Linear feeds _weight_int8pack_mm bf16 activations (its fp32 path is not vectorised)."""
    from scratchlm.model.quant import Int4Linear, Int8Linear

    lin = torch.nn.Linear(in_f, out_f, bias=False)
    q8, q4 = Int8Linear.from_float(lin), Int4Linear.from_float(lin, 64)
    x = torch.randn(1, in_f)
    ones = torch.ones(out_f)
    calls = {"fp32 F.linear": lambda: lin(x),
             "int8pack_mm, fp32 activations": lambda: torch.ops.aten._weight_int8pack_mm(x, q8.qweight, ones),
             "int8pack_mm, bf16 activations (Int8Linear)": lambda: q8(x),
             "int4pack_mm g64, bf16 activations (Int4Linear)": lambda: q4(x)}
    out = {}
    for name, fn in calls.items():
        for _ in range(10):
            fn()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = (time.perf_counter() - t) / repeats * 1e6
    return out


@torch.inference_mode()
def profile_decode(model, prompt: list[int], steps: int = 32) -> None:
    """Print where our int8 decode step spends its time (torch.profiler, eager)."""
    from torch.profiler import ProfilerActivity, profile

    cache = model.new_cache(1, len(prompt) + steps + 1)
    logits = model(torch.tensor([prompt]), cache=cache).logits[:, -1]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            logits = model(logits.argmax(-1, keepdim=True), cache=cache).logits[:, -1]
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


def main() -> None:
    """Build or open the float run, quantize it three ways, measure, print ratios to fp32."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="a float run folder (default: minimind-26m trained here briefly)")
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--workdir", default="/tmp/bench_quant", help="where the trained run, quantized runs and GGUFs go")
    ap.add_argument("--train-seconds", type=float, default=120.0)
    ap.add_argument("--ppl-tokens", type=int, default=4097, help="validation tokens scored for perplexity")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens (from the validation text)")
    ap.add_argument("--new", type=int, default=64, help="tokens decoded per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch and llama.cpp threads (0 = torch's default)")
    ap.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant's migration strength")
    ap.add_argument("--group-size", type=int, default=64, help="AWQ's int4 group size")
    ap.add_argument("--compile", action="store_true", help="also time the engine's compiled decode step")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--profile", action="store_true", help="profile our int8 decode step")
    ap.add_argument("--stream-mb", type=int, default=256, help="MB per buffer of the bandwidth measurement")
    ap.add_argument("--results", default=None, metavar="FILE", help="write the numbers to FILE (docs/results/...)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    from scratchlm.export.gguf import export_gguf
    from scratchlm.quant.quantize import quantize_run
    from scratchlm.runs import load_run

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    run = Path(args.run) if args.run else train_brief_run(work, args.train_seconds, args.preset)
    fp32, tok, cfg = load_run(run)
    import shutil

    from scratchlm.model.quant import quantize_model

    t_quant = {}
    for method in ("int8", "smoothquant", "awq"):
        if (work / method).exists():
            shutil.rmtree(work / method)
        t0 = time.perf_counter()
        quantize_run(run, work / method, method, alpha=args.alpha, group_size=args.group_size)
        t_quant[method] = time.perf_counter() - t0
    tao = torchao_int8(run)
    tao_file = work / "torchao_int8.pt"
    torch.save(tao.state_dict(), tao_file)
    awq_name = f"AWQ int4 g{args.group_size} (ours)"
    models = {"fp32": fp32, "int8 (ours)": load_run(work / "int8")[0], "int8 (torchao)": tao,
              f"SmoothQuant W8A8 α={args.alpha} (ours)": load_run(work / "smoothquant")[0],
              awq_name: load_run(work / "awq")[0]}
    files = {"fp32": run / "model.safetensors", "int8 (ours)": work / "int8" / "model.safetensors",
             "int8 (torchao)": tao_file, awq_name: work / "awq" / "model.safetensors",
             f"SmoothQuant W8A8 α={args.alpha} (ours)": work / "smoothquant" / "model.safetensors"}
    sizes = {name: f.stat().st_size for name, f in files.items()}
    n_lin, n_rows = linear_params(fp32)
    int8_bytes = n_lin + 4 * n_rows  # a byte a weight and an fp32 scale a row
    read_bytes = {"fp32": 4 * n_lin, "int8 (ours)": int8_bytes, "int8 (torchao)": int8_bytes,
                  f"SmoothQuant W8A8 α={args.alpha} (ours)": int8_bytes,
                  awq_name: n_lin // 2 + 4 * n_lin // args.group_size}  # half a byte a weight, bf16 scale+zero a group

    seq_len = min(args.seq_len, cfg.model.max_seq_len)
    ids = validation_ids(tok, args.ppl_tokens)
    scored = {name: perplexity(m, ids, seq_len) for name, m in models.items()}
    ppl = {name: p for name, (p, _) in scored.items()}
    top1 = {name: float((t == scored["fp32"][1]).float().mean()) for name, (_, t) in scored.items()}
    # AWQ without its scales: plain round-to-nearest int4 in the same groups (every α = 0), perplexity only
    ppl_rtn = perplexity(quantize_model(load_run(run)[0], "awq", args.group_size), ids, seq_len)[0]

    prompt = ids[: args.prompt]
    timers = {name: engine_decode(m, prompt, args.new, False) for name, m in models.items()}
    timers["fp32, int8 KV cache"] = engine_decode(fp32, prompt, args.new, False, "int8")
    read_bytes["fp32, int8 KV cache"] = read_bytes["fp32"]
    # the int8 KV pool's greedy agreement on held-out prompts: 24 windows of the validation text
    kv = kv_agreement(fp32, [ids[i * 128: i * 128 + args.prompt] for i in range(24)], args.new)
    if args.compile:
        for name, m in list(models.items()):
            timers[name + " compiled"] = engine_decode(m, prompt, args.new, True)
            read_bytes[name + " compiled"] = read_bytes[name]
    cpp = {}
    if not args.no_llama_cpp:
        for dtype in ("f32", "q8_0"):
            path = work / f"model-{dtype}.gguf"
            export_gguf(run, path, dtype)
            name = f"llama.cpp {dtype}"
            sizes[name] = path.stat().st_size
            read_bytes[name] = 4 * n_lin if dtype == "f32" else n_lin * 34 // 32  # q8_0: 32 int8 + one f16 scale
            cpp[name] = LlamaCpp(path, threads, args.prompt + args.new + 16)
            timers[name] = (lambda c: (lambda: c.decode(prompt, args.new)))(cpp[name])
    speeds: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(args.repeats):  # alternating, so that every variant sees the same load
        for name, fn in timers.items():
            speeds[name].append(fn()[0])
    tps = {name: statistics.median(v) for name, v in speeds.items()}
    bw = measure_bandwidth(args.stream_mb)
    floor = {name: bw["read"] * 1e9 / b for name, b in read_bytes.items()}

    print(f"{args.run or args.preset}: {fp32.num_params() / 1e6:.1f}M params, CPU threads={threads}, "
          f"perplexity over {len(ids)} validation tokens (windows of {seq_len}), decode: batch 1, greedy, "
          f"{args.prompt}-token prompt + {args.new} new, median of {args.repeats}; read bandwidth {bw['read']:.1f} GB/s")
    print(f"{'':30} {'ppl':>8} {'×fp32':>6} {'size MB':>8} {'×fp32':>6} {'tok/s':>8} {'×fp32':>6} "
          f"{'floor tok/s':>11} {'of floor':>8} {'top-1 = fp32':>12}")
    rows = {}
    for name in timers:
        base = "fp32 compiled" if name.endswith("compiled") else "fp32"
        p = ppl.get(name.removesuffix(" compiled"))
        size = sizes.get(name.removesuffix(" compiled"))
        rows[name] = {"ppl": p, "ppl_ratio": p / ppl["fp32"] if p else None, "bytes": size,
                      "size_ratio": size / sizes["fp32"] if size else None, "tok_s": tps[name],
                      "tok_s_ratio": tps[name] / tps[base], "floor_tok_s": floor[name],
                      "share_of_floor": tps[name] / floor[name],
                      "top1_agreement": top1.get(name.removesuffix(" compiled"))}
        r = rows[name]
        print(f"{name:30} {p or float('nan'):8.3f} {r['ppl_ratio'] or float('nan'):6.3f} "
              f"{size / 1e6 if size else float('nan'):8.1f} {r['size_ratio'] or float('nan'):6.3f} {r['tok_s']:8.1f} "
              f"{r['tok_s_ratio']:6.2f} {r['floor_tok_s']:11.1f} {r['share_of_floor']:8.0%} "
              f"{r['top1_agreement'] if r['top1_agreement'] is not None else float('nan'):12.4f}")
    print(f"  {awq_name.replace(' (ours)', '')} without AWQ's scales (round-to-nearest, α = 0): ppl {ppl_rtn:.3f} "
          f"({ppl_rtn / ppl['fp32']:.3f}× fp32); quantizing took " +
          ", ".join(f"{m} {t:.0f} s" for m, t in t_quant.items()))
    goals = {"int8 decode / fp32 (goal >= 1.6)": tps["int8 (ours)"] / tps["fp32"],
             "int8 ours / torchao int8": tps["int8 (ours)"] / tps["int8 (torchao)"]}
    if cpp:
        goals["fp32 ours / llama.cpp f32 (goal >= 1.0)"] = tps["fp32"] / tps["llama.cpp f32"]
        goals["int8 ours / llama.cpp q8_0 (goal >= 0.8)"] = tps["int8 (ours)"] / tps["llama.cpp q8_0"]
        if args.compile:
            goals["compiled fp32 ours / llama.cpp f32"] = tps["fp32 compiled"] / tps["llama.cpp f32"]
            goals["compiled int8 ours / llama.cpp q8_0"] = tps["int8 (ours) compiled"] / tps["llama.cpp q8_0"]
    for k, v in goals.items():
        print(f"  {k}: {v:.2f}")
    print(f"  int8 KV cache vs fp32 pool, greedy, {kv['prompts']} validation prompts × {args.new} tokens: "
          f"{kv['prompts_equal']:.0%} of prompts identical, {kv['tokens_before_first_difference']:.1%} of tokens "
          f"before the first difference")
    kernels = kernel_times()
    print("  one decode-sized matmul (1 × 512 → 1408): " + ", ".join(f"{k} {v:.0f} µs" for k, v in kernels.items()))
    print(f"({time.perf_counter() - t_start:.0f} s in all)")
    if args.profile:
        profile_decode(models["int8 (ours)"], prompt)
    if args.results:
        from scratchlm.results import write_results

        write_results(args.results, "bench_quant", {
            "model": args.run or args.preset, "params": fp32.num_params(),
            "trained_seconds": None if args.run else args.train_seconds, "threads": threads,
            "ppl_tokens": len(ids), "seq_len": seq_len, "prompt_tokens": args.prompt, "new_tokens": args.new,
            "repeats": args.repeats, "bandwidth_gb_s": bw, "rows": rows, "goals": goals,
            "awq_rtn_ppl": ppl_rtn, "quantize_seconds": t_quant, "kernel_us": kernels,
            "kv_int8_agreement": kv},
            seed=0, split="validation",
            notes="ppl and top-1 agreement (teacher-forced argmax = fp32's): corpus validation text; llama.cpp rows "
                  "have neither (its server gives no prompt log-probs); "
                  "decode tok/s exclude the prefill; floor = read bandwidth / bytes of the weights read per token")


if __name__ == "__main__":
    main()
