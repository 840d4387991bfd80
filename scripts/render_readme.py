"""Render the README's reference tables from the results files under docs/results/.

    python scripts/render_readme.py            # rewrite every rendered block of README.md in place
    python scripts/render_readme.py --check    # exit 1 (and show the difference) when README.md is out of date

A rendered block sits between `<!-- results:NAME ... -->` and `<!-- /results -->`; its text is what RENDERERS[NAME]
makes of the results files it names, so a number in it can only change by rerunning the command that measured it
(each file records that command, its seed, split, commit and machine). tests/test_results.py runs --check.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+)[^\n]*-->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def _load(name: str, results: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "src"))
    from scratchlm.results import read_results

    return read_results(results / f"{name}.json")


def _acc(summary: dict[str, Any], task: str) -> str:
    c, n = summary["counts"][task]
    return f"{c / n:.3f} ({c}/{n})"


def _machine(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    where = m["gpu"] or f"{m['cpu']} CPU, {m['cores']} cores, {m['torch_threads']} torch threads"
    return f"{where}, torch {m['torch']}"


def _provenance(docs: list[dict[str, Any]]) -> str:
    """One line naming the command, seed, date and commit of each file (short commit, '+dirty' kept)."""
    parts = [f"`{d['command']}` ({d['date']}, commit {str(d['commit'])[:10]}{'+dirty' if str(d['commit']).endswith('+dirty') else ''})"
             for d in docs]
    return "; ".join(parts)


def _ba(pair: list[float], fmt: str = ".3f") -> str:
    return f"{pair[0]:{fmt}} → {pair[1]:{fmt}}"


def _turns(s: dict[str, Any], task: str) -> str:
    """`task` asked alone → as a chat's third turn → thinking off, as counts of the conversation eval."""
    conv = s["conversation"]
    return " → ".join(f"{conv[m][task][0]}" for m in ("alone", "third_turn", "think_off")) + f" of {conv['alone'][task][1]}"


def _open_ended(s: dict[str, Any], key: str) -> str:
    """An open-ended share, thinking on / off."""
    return " / ".join(f"{s['open_ended'][m][key]:.2f}" for m in ("thinking on", "thinking off"))


def _host(s: dict[str, Any]) -> str:
    """The matmul probe the demo takes at its start and after eval (older results files have none)."""
    host = s.get("host_matmul_gflops")
    return f"{host['start']:.0f} / {host['after_eval']:.0f} GFLOP/s" if host else "not probed"


def _reused(s: dict[str, Any]) -> list[str]:
    """The stage folders a demo run evaluated without training them (summary.json's `reused`; in results files from
    before it existed, a pretrain or SFT stage without seconds)."""
    return s.get("reused", [st for st in ("pretrain", "sft") if st not in s["seconds"]])


def _all_minutes(s: dict[str, Any], refs: list[dict[str, Any]]) -> str:
    """A `--stages all` run's wall clock; a run that reused the reference run's pretraining and SFT folders (the
    same models: the demo is deterministic) adds that run's data-to-eval seconds, and says so."""
    reused = _reused(s)
    if any(st not in ("pretrain", "sft") for st in reused):
        return "not timed (trained in earlier runs: see the notes)"
    if "pretrain" not in reused:
        return f"{s['seconds']['total'] / 60:.1f} min"
    ref = next(d["numbers"] for d in refs if d["seed"] == s["settings"]["seed"])
    before = sum(ref["seconds"][k] for k in ("data", "pretrain", "sft", "eval"))
    return f"{(before + s['seconds']['total']) / 60:.1f} min (data to eval: the reference run's)"


def render_demo(results: Path) -> str:
    """The demo's reference table: pretrain + SFT (and the tools step) of both seeds, test split."""
    docs = [_load(f"demo_seed{s}", results) for s in (0, 1)]
    s0, s1 = (d["numbers"] for d in docs)
    everything = tuple(_load(f"demo_all_seed{s}", results)["numbers"] for s in (0, 1))
    unseen = "add2 (unseen phrasings)"
    n_open = s0["open_ended"]["thinking on"]["replies"]

    def row(metric: str, fn: Callable[[dict[str, Any]], str], goal: str = "",
            runs: tuple[dict[str, Any], dict[str, Any]] = (s0, s1)) -> str:
        return f"| {metric} | {fn(runs[0])} | {fn(runs[1])} | {goal} |"

    def secs(s: dict[str, Any], *keys: str) -> str:
        return " / ".join(f"{s['seconds'][k]:.0f}" for k in keys) + " s"

    base = ("data", "pretrain", "sft", "eval")
    lines = [
        f"Measured by {_provenance(docs)} on {_machine(docs[0])}. Accuracies are on the **test** split "
        f"({s0['settings']['eval_per_task']} prompts per task): items and phrasings that no setting was chosen on."
        + "".join(f" Seed {d['seed']}: {d['notes']}" for d in docs if d.get("notes")),
        "",
        "| metric | seed 0 | seed 1 | goal |",
        "|---|---|---|---|",
        row("test accuracy: add2", lambda s: _acc(s, "add2"), "≥ 0.9"),
        row("test accuracy: add2 in unseen phrasings", lambda s: _acc(s, unseen), "≥ 0.9"),
        row("test accuracy: identity", lambda s: _acc(s, "identity"), "≥ 0.9"),
        row("test accuracy: author / next_line", lambda s: f"{s['accuracy']['author']:.3f} / {s['accuracy']['next_line']:.3f}",
            "(needs memorised poems)"),
        row("val perplexity: pretrained model", lambda s: f"{s['val_ppl_pretrain']:.1f}"),
        row("val perplexity: after SFT", lambda s: f"{s['val_ppl_sft']:.1f} ({s['val_ppl_sft'] / s['val_ppl_pretrain']:.2f}×)",
            "≤ 253 (0.75× the 338 of 2026-12-05)"),
        row("val perplexity: unigram model (same tokens)", lambda s: f"{s['val_ppl_unigram']:.1f}"),
        row("ratio pretrained / unigram", lambda s: f"{s['val_ppl_pretrain'] / s['val_ppl_unigram']:.3f}", "≤ 0.33"),
        row("add2, alone → as a chat's third turn → thinking off", lambda s: _turns(s, "add2"),
            "third turn within 5 points of alone"),
        row("identity, alone → as a chat's third turn → thinking off", lambda s: _turns(s, "identity"),
            "as well as alone"),
        row(f"open-ended requests ({n_open}, chat sampling) without stutter, thinking on / off",
            lambda s: _open_ended(s, "pass"), "≥ 0.90"),
        row("open-ended requests answered with the identity line, thinking on / off",
            lambda s: _open_ended(s, "identity_line"), "≤ 0.10"),
        row(f"tools step: {s0['tools']['n']} problems of 4-5 digits, the agent with the calculator / the same model alone",
            lambda s: f"**{s['tools']['agent']['all']:.2f}** / {s['tools']['direct']['all']:.2f}", "≥ 0.9 / near 0"),
        row("tools step: add2 / identity, the SFT model → after the tools step",
            lambda s: f"{_ba(s['tools']['tasks']['add2'])} / {_ba(s['tools']['tasks']['identity'])}"),
        row("time: data / pretrain / SFT / eval / tools step", lambda s: secs(s, *base, "tools")),
        row("time: `--stages all` (the runs of the table below)", lambda s: _all_minutes(s, docs), "≤ 25 min",
            runs=everything),
        row("time: the default demo (data to eval)", lambda s: f"**{sum(s['seconds'][k] for k in base) / 60:.1f} min**",
            "≤ 15 min"),
        row("the host's speed then: torch.mm 2048² fp32 at the start / after eval", _host),
    ]
    return "\n".join(lines) + "\n"


def render_post_training(results: Path) -> str:
    """The `--stages all` table: every stage after SFT, both seeds, test split (runs of their own: demo_all_seed*)."""
    docs = [_load(f"demo_all_seed{s}", results) for s in (0, 1)]
    s0, s1 = (d["numbers"] for d in docs)
    unseen = "add2 (unseen phrasings)"

    def row(stage: str, what: str, fn: Callable[[dict[str, Any]], str]) -> str:
        return f"| {stage} | {what} | {fn(s0)} | {fn(s1)} |"

    def grpo(s: dict[str, Any]) -> str:
        g, t = s["grpo"], s["grpo"]["task"]
        return f"{g['cold_start'][t][0]:.3f} → {g['cold_start'][t][1]:.3f} → **{g['tasks'][t][1]:.3f}** ({g['cold_start_steps']} steps)"

    def rag(s: dict[str, Any]) -> str:
        qs = s["rag"]["questions"]
        return f"{sum(q['right_doc_retrieved'] for q in qs)}/{len(qs)} retrieved, {sum(q['correct'] for q in qs)}/{len(qs)} right"

    def final(s: dict[str, Any]) -> str:
        ppo = s["ppo"]["tasks"]
        return "; ".join(f"{_ba(ppo[k])}" for k in ("add2", unseen, "identity"))

    def timed(s: dict[str, Any], keys: list[str], text: Callable[[], str]) -> str:
        return "not timed (trained in earlier runs)" if set(keys) & set(_reused(s)) else text()

    def lanes(s: dict[str, Any]) -> str:
        return timed(s, [k for lane in s["lanes"] for k in lane], lambda: " \\| ".join(
            f"{', '.join(lane)}: {sum(s['seconds'][k] for k in lane):.0f} s" for lane in s["lanes"]))

    stages = [k for k in ("lora", "reward", "dpo", "grpo", "ppo", "distill", "rag", "tools") if k in s0["seconds"]]
    lines = [
        f"Measured by {_provenance(docs)} on {_machine(docs[0])}, with the demo's defaults at that commit; every "
        "stage starts from that seed's SFT model, accuracies on the test split."
        + "".join(f" Seed {d['seed']}: {d['notes']}" for d in docs if d.get("notes")),
        "",
        "| stage | what | seed 0 | seed 1 |",
        "|---|---|---|---|",
        row("LoRA (new name)", f"test identity answers {s0['lora']['name']!r}; add2 before → after",
            lambda s: f"{s['lora']['identity_new_name']:.3f}; {s['lora']['add2_before']:.3f} → {s['lora']['add2_after']:.3f}"),
        row("reward model", f"test pair accuracy ({s0['reward']['pairs']} pairs), untrained head → trained",
            lambda s: _ba([s["reward"]["accuracy_before"], s["reward"]["accuracy_after"]])),
        row("DPO + RPO", "implicit-reward accuracy, SFT (0 by definition: it is the reference) → DPO; add2 before → after",
            lambda s: f"0 → **{s['dpo']['implicit_accuracy']:.3f}**; {_ba(s['dpo']['tasks']['add2'])}"),
        row("GRPO on add3", "add3: SFT → cold start → GRPO (cold-start steps)", grpo),
        row("GRPO on add3", "add2 in unseen phrasings: SFT → after GRPO",
            lambda s: f"{s['grpo']['cold_start'][unseen][0]:.3f} → {s['grpo']['tasks'][unseen][1]:.3f}"),
        row("PPO, reward model", "test mean reward, sampled; greedy",
            lambda s: f"{_ba(s['ppo']['reward'], '.2f')}; {_ba(s['ppo']['reward_greedy'], '.2f')}"),
        row("the final model (PPO's)", "add2; in unseen phrasings; identity: SFT → final", final),
        row("distillation", "val chat perplexity: teacher; student with KD / alone",
            lambda s: f"{s['distill']['val_ppl']['teacher']:.2f}; **{s['distill']['val_ppl']['distill']:.2f}** / "
                      f"{s['distill']['val_ppl']['baseline']:.2f}"),
        row("distillation", "add2: teacher; student with KD / alone",
            lambda s: f"{s['distill']['tasks']['teacher']['add2']:.3f}; **{s['distill']['tasks']['distill']['add2']:.3f}** / "
                      f"{s['distill']['tasks']['baseline']['add2']:.3f}"),
        row("RAG", "a question per language: right document retrieved, answer right", rag),
        row("tools", f"{s0['tools']['n']} problems of 4-5 digits: the agent with the calculator / the same model alone",
            lambda s: f"**{s['tools']['agent']['all']:.2f}** / {s['tools']['direct']['all']:.2f}"),
        row("time", " / ".join(stages), lambda s: timed(s, stages, lambda: " / ".join(
            f"{s['seconds'][k]:.0f}" for k in stages) + " s")),
        row("time", "the two lanes after SFT, one thread each", lanes),
    ]
    return "\n".join(lines) + "\n"


def render_decode(results: Path) -> str:
    """Batch-1 decode against both floors (bench/bench_decode.py)."""
    doc = _load("bench_decode", results)
    n = doc["numbers"]
    bw = n["bandwidth_gb_s"]
    return (f"Batch-1 greedy decode of `{n['preset']}` ({n['weights_mb']:.0f} MB of fp32 weight matrices read per token), "
            f"`{doc['command']}` on {_machine(doc)} ({doc['date']}): ours {n['ours_tok_s']:.1f} tok/s, transformers "
            f"{n['transformers_tok_s']:.1f} tok/s ({n['ours_tok_s'] / n['transformers_tok_s']:.2f}×, same tokens: "
            f"{n['same_tokens']}). Two floors: one GEMV per matrix and nothing else runs at {n['gemv_floor_tok_s']:.1f} "
            f"tok/s (ours {n['ours_tok_s'] / n['gemv_floor_tok_s']:.0%} of it); the machine reads memory at "
            f"{bw['read']:.1f} GB/s (copy {bw['copy']:.1f}, triad {bw['triad']:.1f}; `bench/stream.py`), so reading the "
            f"weights once bounds decode at {n['physical_floor_tok_s']:.1f} tok/s (ours "
            f"{n['ours_tok_s'] / n['physical_floor_tok_s']:.0%}, the GEMV pass "
            f"{n['gemv_floor_tok_s'] / n['physical_floor_tok_s']:.0%}).\n")


def render_engine(results: Path) -> str:
    """The serving engine against its references (bench/bench_engine.py)."""
    doc = _load("bench_engine", results)
    n = doc["numbers"]
    b1, agg, floor = n["batch1_tok_s"], n["aggregate_tok_s"], n["gemv_floor_tok_s"]
    eager = agg["eager"]
    text = (f"Measured (`{doc['command']}`, {n['params'] / 1e6:.0f}M model, {_machine(doc)}, {doc['date']}): 16 requests "
            f"together {eager['16'] / eager['1']:.1f}× the throughput of one; 16 mixed-length requests hold "
            f"{n['kv_paged_bytes'] / n['kv_contiguous_bytes']:.2f}× the KV memory of contiguous caches; a second chat "
            f"turn's first token {n['second_turn_ttft_s']['without'] / n['second_turn_ttft_s']['prefix_caching']:.1f}× "
            f"sooner with prefix caching; batch-1 decode {b1['eager'] / n['contiguous_loop_tok_s']:.2f}× a bare "
            f"contiguous-cache loop ({b1['eager'] / floor:.0%} of a pass of one GEMV per weight matrix).")
    if "compiled" in b1 and "compiled" in agg:
        comp = agg["compiled"]
        text += (f" `serve --compile` / `chat --compile` compile the decode step with frozen weights: batch-1 decode "
                 f"{b1['compiled'] / b1['eager']:.2f}× faster ({b1['eager']:.0f} → {b1['compiled']:.0f} tok/s, "
                 f"{b1['compiled'] / floor:.0%} of that GEMV pass), 16 streams {comp['16'] / eager['16']:.2f}× "
                 f"({comp['16']:.0f} tok/s, {comp['16'] / comp['1']:.1f}× one stream).")
    return text + "\n"


def render_train(results: Path) -> str:
    """Whole-loop training throughput and MFU of each variant (bench/bench_train.py)."""
    doc = _load("bench_train", results)
    n = doc["numbers"]
    v = n["variants"]
    parts = [f"{name} {r['best_tok_s']:.0f} tok/s (MFU {r['best_mfu']:.2f})" for name, r in v.items()]
    return (f"Training step, whole loop, best step of each (`{doc['command']}`, {doc.get('notes', '')}; "
            f"{_machine(doc)}, {doc['date']}; matmul peak {n['peak_gflops']:.0f} GFLOP/s): " + "; ".join(parts) + ".\n")


def render_rollout(results: Path) -> str:
    """GRPO's memory over 100 steps (bench/bench_rl_memory.py) and rollout speed (bench/bench_rollout.py)."""
    mem, roll = _load("bench_rl_memory", results), _load("bench_rollout", results)
    m, r = mem["numbers"], roll["numbers"]
    return (f"GRPO's rollouts keep resident memory flat: median RSS of steps 96–105 over steps 6–15 "
            f"{m['median_ratio']:.2f}× (step 100 over step 10 {m['ratio']:.2f}×; goal ≤ 1.05; `{mem['command']}`, "
            f"{m['batch']} prompts × G={m['g']} a step, {mem['date']}). Our engine samples {r['ratio']:.1f}× the "
            f"tokens/s of transformers' `generate` on the chat model {r['model']} ({r['prompts']} prompts × {r['G']}, rows that "
            f"stop retire at once; `{roll['command']}`, {_machine(roll)}, {roll['date']}).\n")


def render_rag(results: Path) -> str:
    """Retrieval recall on the generated question set (`scratchlm rag eval`) and the store's latency (bench_rag)."""
    ev, st = _load("rag_eval", results), _load("bench_rag", results)
    rec = ev["numbers"]["recall"]

    def pick(*words: str, exclude: str = "") -> dict[str, float]:
        hits = [k for k in rec if all(w in k for w in words) and not (exclude and exclude in k)]
        if len(hits) != 1:
            raise ValueError(f"rag_eval.json: {len(hits)} recall rows match {words} (rows: {', '.join(rec)})")
        return rec[hits[0]]

    def en_zh(r: dict[str, float]) -> str:
        return f"{r['en']:.2f} / {r['zh']:.2f}"

    k = ev["numbers"]["k"]
    big = max(st["numbers"]["sizes"], key=int)
    mets = st["numbers"]["sizes"][big]["metrics"]
    ratios = [v["knn_over_numpy"] for v in mets.values()]
    return (f"Recall@{k} on {ev['numbers']['questions']} held-out corpus questions (English / Chinese; nothing was "
            f"tuned on them): multilingual-e5-small + BM25 {en_zh(pick('e5', '+ BM25'))} (e5 alone "
            f"{en_zh(pick('e5', exclude='BM25'))}, MiniLM {en_zh(pick('MiniLM', exclude='BM25'))}, BM25 alone "
            f"{en_zh(pick('BM25 alone'))}: these questions quote their document; `{ev['command']}`, {ev['date']}). "
            f"At {int(big):,} chunks sqlite-vec answers in {mets['cosine']['knn_p50_ms']:.0f} ms p50 (cosine), "
            f"{min(ratios):.1f}–{max(ratios):.1f}× the time of an exact numpy search over the three metrics "
            f"(`{st['command']}`, {st['date']}, a machine shared with other jobs: the milliseconds move with its load, "
            f"the ratios much less).\n")


def render_scaling(results: Path) -> str:
    """Greedy vs self-consistency and best-of-N on held-out tasks (docs/experiments/inference_scaling.py)."""
    doc = _load("inference_scaling", results)
    n = doc["numbers"]
    k = n["n"]
    names = {"sft": "SFT", "grpo_cold": "GRPO cold start"}
    lines = [f"Inference-time scaling, N = {k}, on the {doc['split']} split of the seed-{doc['seed']} demo "
             f"(`{doc['command']}`, {doc['date']}; each method's temperature chosen on val):", "",
             f"| model · task | greedy | self-consistency@{k} | best-of-{k}, reward model | best-of-{k}, trace verifier "
             f"| pass@{k} (at self-consistency's temperature) |", "|---|---|---|---|---|---|"]
    for model, m in n["settings"].items():
        for task, r in m["tasks"].items():
            ver = r.get(f"best_of_verifier@{k}")
            lines.append(f"| {names.get(model, model)} · {task} | {r['greedy']:.3f} | {r[f'self_consistency@{k}']:.3f} | "
                         f"{r[f'best_of_reward@{k}']:.3f} | {'—' if ver is None else f'{ver:.3f}'} | "
                         f"{r[f'pass@{k}_at_self_consistency_temperature']:.3f} |")
    return "\n".join(lines) + "\n"


def render_quant(results: Path) -> str:
    """Quantized decode beside torchao and llama.cpp (bench/bench_quant.py) and the int8 KV cache (bench/bench_kv.py)."""
    doc, kv = _load("bench_quant", results), _load("kv_int8", results)
    n = doc["numbers"]
    lines = [f"`{n['model']}` ({n['params'] / 1e6:.1f}M parameters, {n['trained_seconds']:.0f} s of pretraining), batch-1 "
             f"decode of {n['new_tokens']} tokens on {n['threads']} thread(s), `{doc['command']}` on {_machine(doc)} "
             f"({doc['date']}; the ratios move with the machine's load, [docs/quantization.md](docs/quantization.md)); "
             "the floor is the time to read the weights once at "
             f"{n['bandwidth_gb_s']['read']:.1f} GB/s:", "",
             "| variant | perplexity × fp32 | file × fp32 | decode tok/s | × fp32 | share of the floor |",
             "|---|---|---|---|---|---|"]
    def cell(v: float | None, fmt: str) -> str:
        return "—" if v is None else f"{v:{fmt}}"

    for name, r in n["rows"].items():
        lines.append(f"| {name} | {cell(r['ppl_ratio'], '.4f')} | {cell(r['size_ratio'], '.2f')} | "
                     f"{cell(r['tok_s'], '.1f')} | {cell(r['tok_s_ratio'], '.2f')} | {cell(r['share_of_floor'], '.1%')} |")
    g, rows = n["goals"], n["rows"]
    lines += ["", f"Goals: our int8 ≥ 1.6× our fp32: {g['int8 decode / fp32 (goal >= 1.6)']:.2f}×; ours ≥ 1.0× "
                  f"llama.cpp f32: {g['fp32 ours / llama.cpp f32 (goal >= 1.0)']:.2f}×; our int8 ≥ 0.8× llama.cpp "
                  f"q8_0: {g['int8 ours / llama.cpp q8_0 (goal >= 0.8)']:.2f}×. The last two are not reached: "
                  f"llama.cpp's f32 decode reads its weights at {rows['llama.cpp f32']['share_of_floor']:.0%} of the "
                  f"floor, ours at {rows['fp32']['share_of_floor']:.0%}; the profile in docs/quantization.md shows where "
                  "our step goes (torch's int8 kernel about half of it, the rest many small ops with Python between)."]
    k = kv["numbers"]
    chat, cap = k["chat"]["all"], k["capacity"]
    lines += ["", f"The int8 KV cache (`{kv['command']}`, {kv['date']}, the seed-{kv['seed']} demo's {kv['split']} "
                  f"split): greedy replies identical to the fp32 pool's on {chat['identical']} of {chat['prompts']} "
                  f"prompts ({chat['identical_share']:.1%}); {cap['max_sequences_ratio']:.1f}× the sequences of "
                  f"{cap['tokens_per_sequence']} tokens running together in the same {cap['budget_bytes'] / 2**20:.1f} "
                  f"MiB; perplexity through the pool {k['perplexity']['ratio']:.5f}× fp32's."]
    return "\n".join(lines) + "\n"


def render_tools(results: Path) -> str:
    """The demo trained with tool-use chats against the same demo without (docs/experiments/tool_sft.py)."""
    doc = _load("tool_sft", results)
    n = doc["numbers"]
    t = n["tool_use_accuracy"]
    change = ", ".join(f"{task} {d:+.2f}" for task, d in n["accuracy_change"].items())
    return (f"Tool chats mixed into the demo's own SFT (`tool_sizes`, answers restating the sum as the data wrote them "
            f"then), held-out {t['n']} 4–5 digit problems ({t['split']} split, seed {doc['seed']}; `{doc['command']}`, "
            f"{doc['date']}): the agent with the calculator {t['agent']['all']:.2f}, the same model answering alone "
            f"{t['direct']['all']:.2f}, runs that called the calculator {t['called_calculator']['all']:.2f}; the other "
            f"tasks against the demo without tool chats: {change}.\n")


def render_agent_rl(results: Path) -> str:
    """Agentic RL from each seed's tools step on 6-digit problems the tools step had not learnt (agent_rl.py
    --calc-tasks), 60 steps and 60 more; and self-consistency over the agent's runs (agent_vote.py)."""
    first = [_load(f"agent_rl_hard_seed{seed}", results) for seed in (0, 1)]
    more = [_load(f"agent_rl_hard120_seed{seed}", results) for seed in (0, 1)]
    votes = [_load(f"agent_vote_seed{seed}", results) for seed in (0, 1)]
    n0 = first[0]["numbers"]
    lines = [f"Agentic RL on problems the tools step has not learnt: held-out {n0['after']['n']} problems of "
             f"{', '.join(n0['calc_tasks'])} (6-digit operands; the tools step trained on 4-5), the agent with the "
             f"calculator, greedy. `scratchlm train agent` (lr {n0['lr']:g}, CISPO) on {n0['rl_prompts']} training "
             f"prompts of {', '.join(n0['rl_calc_tasks'])} (the 4-5 digit ones keep what the tools step learnt), "
             f"{n0['steps']} steps and {more[0]['numbers']['steps']} more; the mix and the 120 steps were chosen on val:",
             "", "| seed | 6-digit val: tools step → 60 → 120 steps | 6-digit test | 4–5 digit test |", "|---|---|---|---|"]

    def chain(a: dict, b: dict) -> str:
        return f"{a['before']['agent']['all']:.2f} → {a['after']['agent']['all']:.2f} → {b['after']['agent']['all']:.2f}"

    for d, e in zip(first, more):
        n, m = d["numbers"], e["numbers"]
        val = chain(n, m)
        lines.append(f"| {d['seed']} | {val} | {chain(n['test'], m['test'])} | "
                     f"{chain(n['keep']['test'], m['keep']['test'])} |")
    v = [d["numbers"]["test"] for d in votes]
    t = next(iter(v[0]["by_temperature"]))
    lines += ["", f"Self-consistency over whole agent runs (`scratchlm agent --self-consistency 8`), the 60-step models, "
                  f"T = {t} (chosen on val), 6-digit test, seeds 0 / 1: greedy "
                  + " / ".join(f"{x['by_temperature'][t]['agent']['all']:.2f}" for x in v) + ", one sampled run "
                  + " / ".join(f"{x['by_temperature'][t]['agent_sampled']['all']:.2f}" for x in v) + ", vote of "
                  f"{v[0]['votes']} " + " / ".join(f"{x['by_temperature'][t]['agent_vote']['all']:.2f}" for x in v)
                  + ": the sampled runs mostly agree with each other, right or wrong, so the vote adds at most 2 points."]
    m = first[0]["machine"]
    lines += ["", f"{m['cpu']} CPU, {m['cores']} cores, one thread a run beside other runs; "
                  f"{_provenance(first + more + votes)}."]
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[Path], str]] = {
    "demo": render_demo, "post-training": render_post_training, "decode": render_decode, "train": render_train,
    "engine": render_engine, "rollout": render_rollout, "rag": render_rag, "scaling": render_scaling,
    "quant": render_quant, "tools": render_tools, "agent-rl": render_agent_rl,
}


def render(text: str, results: Path = RESULTS) -> str:
    """`text` with every rendered block replaced by what its renderer makes of the results files now."""
    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in RENDERERS:
            raise ValueError(f"README block results:{name} has no renderer; known: {', '.join(RENDERERS)}")
        return m.group(1) + RENDERERS[name](results) + m.group(4)

    return BLOCK.sub(sub, text)


def blocks(text: str) -> list[str]:
    """The names of the rendered blocks in `text`, in order."""
    return [m.group("name") for m in BLOCK.finditer(text)]


def main() -> int:
    """Rewrite README.md's rendered blocks, or (--check) report whether they are up to date."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md differs from its rendering")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args()
    text = args.readme.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), "README.md",
                                                       "rendered from docs/results"))
            print(f"\n{args.readme} is out of date with docs/results: run python scripts/render_readme.py")
            return 1
        print(f"{args.readme}: {len(blocks(text))} rendered blocks up to date")
        return 0
    args.readme.write_text(new, encoding="utf-8")
    print(f"rendered {', '.join(blocks(new))} into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
