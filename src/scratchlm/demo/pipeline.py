"""`run_demo`: the demo's steps in order — data and tokenizer → pretrain → SFT → evaluate (held-out task accuracy
with greedy decoding; validation perplexity next to a unigram model's) → the steps after SFT (in one or two lanes)
→ summary.json, the summary table and the report card."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from scratchlm.data.synth import DEFAULT_NAME
from scratchlm.demo.common import check_stage_steps, say
from scratchlm.demo.data import prepare_demo_data, prepare_preference_data
from scratchlm.demo.distill import run_distill_stage
from scratchlm.demo.dpo import run_dpo_stage
from scratchlm.demo.grpo import run_grpo_stage
from scratchlm.demo.lora import run_lora_stage
from scratchlm.demo.ppo import ppo_chain, run_ppo_stage
from scratchlm.demo.pretrain import run_pretrain_stage
from scratchlm.demo.rag import run_rag_stage
from scratchlm.demo.reward import run_reward_stage
from scratchlm.demo.settings import DEMO_STEPS, DemoSettings, quick_settings, tools_on
from scratchlm.demo.sft import run_sft_stage
from scratchlm.demo.tools import check_tools_stage, run_tool_eval, run_tools_stage
from scratchlm.eval.perplexity import perplexities
from scratchlm.eval.conversation import conversation_scores
from scratchlm.eval.stutter import open_ended_report
from scratchlm.eval.tasks import chat_replies, evaluate_tasks, pick_samples
from scratchlm.results import matmul_peak

# What a person would type after the demo (training-style requests): shown in the summary, answered as
# `scratchlm chat` answers (its sampling defaults, seeded by the demo's seed).
DEMO_CHATS = ["Tell me a fortune.", "说一句名言。", "Recite a poem by 李白.", "背诵一首杜甫的诗。",
              "Continue this text: The best way to predict the future", "What is 47 plus 38?", "你是谁？"]


def chat_sampling(s: DemoSettings) -> Any:
    """`scratchlm chat`'s sampling defaults for open-ended replies, seeded: the checkable tasks stay greedy."""
    from scratchlm.engine.chat_defaults import CHAT_SAMPLING_DEFAULTS
    from scratchlm.engine.sampling import SamplingParams

    return SamplingParams(**CHAT_SAMPLING_DEFAULTS, max_new_tokens=3 * s.max_new_tokens, seed=s.seed)


BASE_STEPS = {"pretrain": run_pretrain_stage, "sft": run_sft_stage}
# The steps after SFT: each starts from the SFT run and returns its part of the summary.
AFTER_SFT = {"lora": run_lora_stage, "reward": run_reward_stage, "dpo": run_dpo_stage, "grpo": run_grpo_stage,
             "ppo": run_ppo_stage, "distill": run_distill_stage, "rag": run_rag_stage,
             "tools": run_tools_stage}


def check_lanes(s: DemoSettings) -> None:
    """SystemExit naming the setting unless s.second_lane names steps after SFT and keeps PPO beside the runs it
    starts from or learns from (the reward model; DPO when PPO starts from it): lanes run side by side."""
    unknown = [st for st in s.second_lane if st not in DEMO_STEPS[2:]]
    if unknown:
        raise SystemExit(f"scratchlm demo: second_lane names {', '.join(unknown)}; choose from "
                         f"{', '.join(DEMO_STEPS[2:])}")
    if "ppo" not in s.stages:
        return
    needs = [st for st in ("reward", *ppo_chain(s)[1:-1]) if st in s.stages]
    apart = [st for st in needs if (st in s.second_lane) != ("ppo" in s.second_lane)]
    if apart:
        raise SystemExit(f"scratchlm demo: second_lane must hold ppo and {', '.join(needs)} together or "
                         f"neither (ppo starts from or learns from them), got {list(s.second_lane)}")


def stage_lanes(s: DemoSettings) -> list[list[str]]:
    """The steps after SFT as one lane, or as two lanes (s.second_lane beside the rest) when they run on a CPU with
    at least two threads and s.lanes is 2."""
    from scratchlm.lanes import two_lanes_fit

    after = [st for st in DEMO_STEPS[2:] if st in s.stages]
    second = [st for st in after if st in s.second_lane]
    first = [st for st in after if st not in s.second_lane]
    if s.lanes == 2 and first and second and two_lanes_fit():
        return [first, second]
    return [after] if after else []


def run_after_sft(out: Path, s: DemoSettings, paths: dict[str, Path], scores: dict[str, tuple[int, int]],
                  stage: str, progress: bool) -> Any:
    """Run step `stage` after SFT (the lanes' job runner: a module-level function, so a partial of it pickles)."""
    return AFTER_SFT[stage](out, s, paths, scores, progress)


def run_lanes(lanes: list[list[str]], out: Path, s: DemoSettings, paths: dict[str, Path],
              scores: dict[str, tuple[int, int]], progress: bool) -> dict[str, tuple[Any, float]]:
    """Run the lanes of `stage_lanes` (scratchlm.lanes); {step: (its result, seconds)} in DEMO_STEPS order."""
    from scratchlm.lanes import run_lanes as run_in_lanes

    done = run_in_lanes(lanes, partial(run_after_sft, out, s, paths, scores), progress, seed=s.seed,
                        label="scratchlm demo")
    return {st: done[st] for st in DEMO_STEPS if st in done}


def run_demo(out: str | Path = "runs/demo", quick: bool = False, settings: DemoSettings | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run the whole demo into `out`; returns the summary (also written to out/summary.json)."""
    import torch

    from scratchlm.runs import load_run

    s = settings or (quick_settings() if quick else DemoSettings())
    # settings of the later steps checked before any training: a bad one found after SFT costs its minutes
    if "tools" in s.stages:
        check_tools_stage(s)
    check_lanes(s)  # and ppo_init, through ppo_chain, when PPO runs
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # stage folders an earlier demo finished: they are evaluated, not trained, so their seconds are not a training time
    reused = [st for st in s.stages
              if any((out / st / f).exists() for f in ("model.safetensors", "adapter_model.safetensors"))]
    torch.manual_seed(s.seed)
    # the host's matmul rate now and after eval: a shared machine's speed moves, and the times read against it
    host = {"start": matmul_peak() / 1e9}
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    paths = prepare_demo_data(out, s)
    times["data"] = time.perf_counter() - t0

    for stage, train in BASE_STEPS.items():
        run_dir = out / stage
        check_stage_steps(run_dir, s.pretrain_steps if stage == "pretrain" else s.sft_steps)
        if (run_dir / "model.safetensors").exists():
            say(f"{run_dir} already trained; delete it to train again")
            continue
        t = time.perf_counter()
        train(out, s, paths, progress)
        times[stage] = time.perf_counter() - t

    t = time.perf_counter()
    say("evaluating: held-out task accuracy (greedy) and validation perplexity")
    pre_model, _, pre_cfg = load_run(out / "pretrain")
    model, tokenizer, cfg = load_run(out / "sft")
    seq = min(cfg.model.max_seq_len, s.pretrain_seq_len)
    ppl_pre, ppl_uni = perplexities(pre_model, paths["pretrain"], paths["pretrain_val"], seq)
    ppl_sft, _ = perplexities(model, paths["pretrain"], paths["pretrain_val"], seq)
    scores, graded = evaluate_tasks(model, tokenizer, paths["prompt_eval"], s.eval_per_task, s.max_new_tokens)
    chat_params = chat_sampling(s)
    chats = chat_replies(model, tokenizer, DEMO_CHATS, chat_params)
    say("evaluating: the same questions as the third turn of a chat and with thinking off; open-ended requests "
        "sampled with the chat defaults (stutter, identity line)")
    conversation = conversation_scores(model, tokenizer, paths["prompt_eval"], s.conversation_per_task,
                                       s.max_new_tokens)
    open_ended = {mode: open_ended_report(model, tokenizer, paths["prompt_eval"], DEFAULT_NAME, chat_params,
                                          enable_thinking=mode == "thinking on")
                  for mode in ("thinking on", "thinking off")}
    times["eval"] = time.perf_counter() - t
    host["after_eval"] = matmul_peak() / 1e9
    tool_use = {}
    if tools_on(s):
        t = time.perf_counter()
        from scratchlm.engine.offline import LLM

        tool_use = {"tool_use_accuracy": run_tool_eval(LLM(model, tokenizer), s)}  # the SFT model loaded above
        times["tool_eval"] = time.perf_counter() - t

    after_sft: dict[str, Any] = {}
    if {"reward", "dpo", "ppo"} & set(s.stages):
        paths = prepare_preference_data(out, s, paths)
    lanes = stage_lanes(s)
    if len(lanes) == 2:
        say(f"the stages after SFT run in two processes of {torch.get_num_threads() // 2} thread(s) each: "
            f"{', '.join(lanes[0])} | {', '.join(lanes[1])} (--one-lane runs them one after another)")
    for stage, (result, seconds) in run_lanes(lanes, out, s, paths, scores, progress).items():
        after_sft[stage], times[stage] = result, seconds
    times["total"] = time.perf_counter() - t0
    final_chain = after_sft["ppo"]["chain"] if "ppo" in after_sft else ["sft"]
    summary = {
        "settings": asdict(s),
        "params": int(model.num_params()),
        "accuracy": {k: c / n for k, (c, n) in scores.items()},
        "counts": {k: [c, n] for k, (c, n) in scores.items()},
        "val_ppl_pretrain": ppl_pre, "val_ppl_sft": ppl_sft, "val_ppl_unigram": ppl_uni,
        "seconds": times, "reused": reused, "host_matmul_gflops": host, "torch_threads": torch.get_num_threads(), "lanes": lanes,
        "samples": pick_samples(graded), "chats": chats, "conversation": conversation, "open_ended": open_ended,
        **tool_use, **after_sft,
        # the chat model the demo ends with: the last of the chain SFT → [DPO →] PPO when PPO ran (the other stages
        # branch off SFT and are shown, not kept)
        "final_model": {"run": str(out / final_chain[-1]), "chain": final_chain},
    }
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    _print_summary(summary, out)
    from scratchlm.eval.report import write_report

    # The page to read after the demo: every stage's curves and metrics side by side (its time comes after the
    # total above, which the report quotes).
    t = time.perf_counter()
    runs = [d for st in DEMO_STEPS if st != "rag" for d in (("grpo_cold", st) if st == "grpo" else (st,))]
    stage_dirs = [out / d for d in runs if (out / d / "config.toml").exists()]
    report = write_report(stage_dirs, out, summary, evaluate=s.report_eval, val_data=paths["pretrain_val"])
    say(f"report card: {report} ({time.perf_counter() - t:.0f} s)")
    return summary


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    """The summary on the terminal (eval.summary, the report card's renderer) and where everything is."""
    from rich.console import Console

    from scratchlm.eval.summary import print_summary

    print_summary(summary)
    final = summary["final_model"]
    Console().print(f"everything is in {out}/ (a folder per stage, tokenizer/, data/, summary.json, report.md); "
                    f"chat with the final model ({' → '.join(c.upper() for c in final['chain'])}): "
                    f"scratchlm generate {final['run']} --chat --prompt 'who are you?'")
    if "tools" in summary:
        Console().print(f"the agent with the calculator: scratchlm agent {out}/tools 'What is 4821 * 377?' "
                        f"--tools {','.join(summary['tools']['tools'])}")
