"""The demo's tool use: `run_tool_eval`, the agent with the calculator against the same model answering alone on
held-out 4-5 digit problems of the eval split (agent/tool_data.py's `tool_use_accuracy`), and the `tools` step,
which fine-tunes the SFT model on tool-use chats and measures it so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.demo.common import accuracy, say, train_post_sft
from scratchlm.demo.settings import DemoSettings


def run_tool_eval(llm: Any, s: DemoSettings) -> dict[str, Any]:
    """tool_use_accuracy of `llm` (a `scratchlm.engine.LLM` over a run's model) on s.tool_eval held-out problems of
    s.eval_split (greedy, the tools of s.tool_names listed as in training): {"n", "agent", "direct",
    "called_calculator", "samples", ...}."""
    from scratchlm.agent.tool_data import held_out_problems, tool_use_accuracy

    say(f"evaluating tool use: {s.tool_eval} held-out 4-5 digit problems ({s.eval_split}), the agent with "
        f"{', '.join(s.tool_names)} vs the same model alone")
    problems = held_out_problems(s.tool_eval, s.eval_split, seed=s.seed)
    out = tool_use_accuracy(llm, problems, tools=s.tool_names)
    return {**out, "tools": list(s.tool_names), "split": s.eval_split}


def check_tools_stage(s: DemoSettings) -> tuple[int, int]:
    """SystemExit naming the setting unless the tools step's settings can build its data; returns (fewest, most)
    questions per chat. The demo checks them before it trains anything, not after SFT."""
    from scratchlm.agent.tool_data import check_calc_tasks, check_questions

    if len(s.tools_stage_sizes) != 2 or min(s.tools_stage_sizes) < 1:
        raise SystemExit(f"scratchlm demo: tools_stage_sizes must be [train, val] chats, each >= 1, got "
                         f"{list(s.tools_stage_sizes)}")
    try:
        questions = check_questions(s.tools_stage_questions)
    except ValueError as e:
        raise SystemExit(f"scratchlm demo: tools_stage_questions must be [fewest, most] questions per chat "
                         f"({e})") from None
    try:
        check_calc_tasks(s.tools_stage_calc_tasks)
    except ValueError as e:
        raise SystemExit(f"scratchlm demo: tools_stage_calc_tasks: {e}") from None
    return questions


def run_tools_stage(out: Path, s: DemoSettings, paths: dict[str, Path], sft_scores: dict[str, tuple[int, int]],
                    progress: bool) -> dict[str, Any]:
    """Tool-use SFT from the SFT run (s.tools_stage_sizes chats, rows of s.tools_stage_seq_len) into out/tools; the
    agent with the calculator vs the same model alone, and add2 / identity before (the SFT model) and after."""
    from scratchlm.agent.tool_data import build_tool_sft
    from scratchlm.demo.data import check_chats_fit, prepare_once
    from scratchlm.engine.offline import LLM
    from scratchlm.eval.tasks import evaluate_tasks

    data = out / "data"
    questions = check_tools_stage(s)
    n_train, n_val = s.tools_stage_sizes
    files = build_tool_sft(data / "tools_stage", sizes=(n_train, n_val, 0), direct_share=s.tool_direct_share,
                           seed=s.seed, tools=s.tool_names, questions=questions,
                           calc_tasks=s.tools_stage_calc_tasks)
    shards = prepare_once("sft", paths["tokenizer"], files["sft_train"], data / "tools_stage_sft")
    val = prepare_once("sft", paths["tokenizer"], files["sft_val"], data / "tools_stage_sft_val")
    longest = check_chats_fit(shards, s.tools_stage_seq_len, "tools_stage_seq_len")
    # RoPE has no learnt positions: a longer max_seq_len only lengthens its tables, leaving the agent room for the
    # tools' system turn, the question, a call, its result and the answer
    sets = [f"train.seq_len={s.tools_stage_seq_len}", f"model.max_seq_len={2 * s.tools_stage_seq_len}",
            *s.tools_stage_sets]
    run_dir = train_post_sft("tools", out, s, {**paths, "tools": shards, "tools_val": val}, s.tools_stage_steps,
                             sets, f"tool-use SFT on {n_train} calculator/direct chats (the longest {longest} "
                             f"tokens)", progress)
    llm = LLM.from_run(run_dir)  # one load serves the agent and the task scores
    result = run_tool_eval(llm, s)
    after, _ = evaluate_tasks(llm.model, llm.tokenizer, paths["prompt_eval"], s.eval_per_task, s.max_new_tokens,
                              tasks={"add2", "identity"})  # add2 in unseen phrasings comes with add2
    result["tasks"] = {k: [accuracy(sft_scores[k]), accuracy(v)] for k, v in sorted(after.items()) if k in sft_scores}
    return result
