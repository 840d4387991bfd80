"""Tool-use SFT data and its held-out measurement.

The chats are in the Hermes format of tokenizer/tools.py, with the tools listed exactly as `scratchlm agent` and the
server list them (`ToolRegistry(builtin_tools(...)).schemas()`: the one schema of each tool, derived from its
function):

- **calculator** (task `<op><digits>`, 4+ digits, column "tool": "calculator"): user question → an assistant turn
  that is only a `calculator` call with the expression → the `tool` message holding what the agent's calculator
  returns for it (run through the registry, as the agent loop runs it) → the assistant's answer, the result as the
  tool returned it (`7006652`). Not `1234 × 5678 = 7006652`: restating the sum made the small model compute its last
  digits as add2 taught it instead of copying them (val, seed 0: right calls, wrong last digits in 10 of 12 traces);
- **direct** (identity, next_line, author; column "tool": "none"): the same tools listed, and the model answers
  without calling one.

Splits follow data/tasks.py: arithmetic by operand pair (`Arithmetic`'s own hash, so a held-out product never has
its operands in training), the direct tasks by their own rules. The tool message sits in a user turn, so the
loss mask leaves it out: only the call and the answer are trained.

`tool_use_accuracy` runs the real agent loop (`run_agent` with an `EnginePolicy`) on held-out 4+-digit problems and
compares it with the same model answering with no tools. It lives here, not in eval/, because eval/ and agent/ sit
on the same layer and may not import each other.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

from scratchlm.agent.builtin import builtin_tools
from scratchlm.agent.tools import ToolRegistry
from scratchlm.data.answers import check_answer
from scratchlm.data.synth import make_task
from scratchlm.data.tasks import SIDES, Arithmetic, check_side

DEFAULT_TOOLS = ("calculator", "date")  # what `scratchlm agent` lists by default
CALC_TASKS = ("mul4", "add4", "sub4", "mul5", "add5")
DIRECT_TASKS = ("identity", "next_line", "author")
_WORDS = {"en": {"+": "plus", "-": "minus", "×": "times"}, "zh": {"+": "加", "-": "减", "×": "乘以"}}
_QUESTIONS = {
    "en": ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "What is {a} {opw} {b}?", "Calculate {a}{op}{b}.",
           "How much is {a} {opw} {b}?", "Please work out {a} {op} {b}."],
    "zh": ["{a}{op}{b}等于多少？", "计算{a}{op}{b}。", "{a}{opw}{b}是多少？", "请算一下{a}{op}{b}。", "{a}{opw}{b}得几？",
           "帮我算{a}{op}{b}。"],
}


def tool_registry(names: Sequence[str] = DEFAULT_TOOLS) -> ToolRegistry:
    """The agent's registry of the named built-in tools (what `scratchlm agent --tools` builds)."""
    return ToolRegistry(builtin_tools(list(names)))


def tool_schemas(names: Sequence[str] = DEFAULT_TOOLS) -> list[dict]:
    """The tools as the chat template lists them, from the agent's own tool definitions."""
    return tool_registry(names).schemas()


def calc_chat(rng: random.Random, task: Arithmetic, side: str, lang: str, registry: ToolRegistry) -> dict:
    """One calculator chat of `side`: {"conversations", "answer", "task", "lang", "tool"}."""
    a, b, op = task._draw(rng, check_side(side))  # Arithmetic's own side rule: held-out pairs stay held out
    template = rng.choice(_QUESTIONS[lang])
    question = template.format(a=a, b=b, op=op, opw=_WORDS[lang][op])
    rng.random()  # the draw of an earlier version (spacing by chance), kept so the held-out problems stay the same
    # The call copies the question's arithmetic as written ("57476+90036", "9507 + 8302", "79924×94694"; the
    # calculator reads × as *), and words ("plus", "乘以") become the symbol, spaced. With the spacing and "*" by
    # chance, the operator was the call's one token not copied from the question, and the model got it wrong in 18
    # of 19 failures (val, seed 0, 50 problems)
    expression = f"{a}{op}{b}" if "{a}{op}{b}" in template else f"{a} {op} {b}"
    obs = registry.call("calculator", {"expression": expression})
    if obs.error:
        raise RuntimeError(f"the calculator refused {expression!r}: {obs.text}")
    conv = [{"role": "user", "content": question},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator",
                                                                 "arguments": {"expression": expression}}]},
            {"role": "tool", "content": obs.text},
            {"role": "assistant", "content": obs.text}]
    return {"conversations": conv, "answer": obs.text, "task": task.name, "lang": lang, "tool": "calculator"}


def direct_chat(rng: random.Random, task: Any, side: str, lang: str) -> dict:
    """One chat of a task that needs no tool, answered directly (the tools still listed)."""
    ex = task.sample(rng, side, lang)
    conv = [{"role": "user", "content": ex.question}, {"role": "assistant", "content": ex.reply}]
    return {"conversations": conv, "answer": ex.answer, "task": ex.task, "lang": lang, "tool": "none"}


def check_questions(questions: Sequence[int]) -> tuple[int, int]:
    """`questions` as (fewest, most) questions per tool chat; a ValueError unless 1 <= fewest <= most."""
    if len(questions) != 2 or not 1 <= questions[0] <= questions[1]:
        raise ValueError(f"questions must be (fewest, most) with 1 <= fewest <= most, got {list(questions)}")
    return questions[0], questions[1]


def check_calc_tasks(names: Sequence[str]) -> list[Arithmetic]:
    """The arithmetic tasks `names` of the calculator chats; a ValueError unless there is one and each is 4+ digits."""
    if not names:
        raise ValueError("no calculator tasks: name arithmetic tasks like add4")
    calc = [Arithmetic(t) for t in names]  # a ValueError names a name that is no arithmetic task
    for t in calc:
        if t.digits < 4:
            raise ValueError(f"{t.name}: the calculator chats are for 4+-digit problems (it has {t.digits} digit(s); "
                             "smaller ones the model answers alone)")
    return calc


def build_tool_sft(out_dir: str | Path, sizes: Sequence[int] = (2000, 100, 100), direct_share: float = 0.3,
                   seed: int = 0, tools: Sequence[str] = DEFAULT_TOOLS, calc_tasks: Sequence[str] = CALC_TASKS,
                   direct_tasks: Sequence[str] = DIRECT_TASKS, name: str = "scratchlm",
                   questions: tuple[int, int] = (1, 1)) -> dict[str, Path]:
    """Write sft_{train,val,test}.jsonl ({"conversations", "tools", "task", "lang", "tool"}) and
    prompt_{train,val,test}.jsonl ({"prompt", "answer", "tools", ...}) with `sizes` chats per split, a
    `direct_share` of the questions needing no tool, each chat asking `questions` = (fewest, most) of them in turn
    (the columns and the prompt file describe its first); line i of both files of a split is the same chat. Returns
    the paths."""
    if not 0.0 <= direct_share <= 1.0:
        raise ValueError(f"direct_share={direct_share} must be in [0, 1]")
    questions = check_questions(questions)
    if len(sizes) != 3 or min(sizes) < 0:
        raise ValueError(f"sizes must be [train, val, test] >= 0, got {list(sizes)}")
    registry = tool_registry(tools)
    if "calculator" not in registry.tools:
        raise ValueError("the tool-use set needs the calculator among the tools")
    schemas = registry.schemas()
    calc = check_calc_tasks(calc_tasks)
    direct = [make_task(t, name) for t in direct_tasks]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    counts: dict[str, dict[str, int]] = {}
    for split, n in zip(SIDES, sizes):
        rng = random.Random(f"scratchlm-tools:{seed}:{split}")
        rows = []
        for _ in range(n):
            lang = rng.choice(["en", "zh"])
            turns = []
            # later questions follow in the same chat: each one's call must copy its own digits, not the earlier
            # ones', and the tools' system turn (~290 demo tokens, no loss) is paid once for several calls
            # (one draw only where there is a choice, so that questions=(1, 1) writes the single-question set as before)
            k = questions[0] if questions[0] == questions[1] else rng.randint(*questions)
            for _ in range(k):
                if direct and rng.random() < direct_share:
                    turns.append(direct_chat(rng, rng.choice(direct), split, lang))
                else:
                    turns.append(calc_chat(rng, rng.choice(calc), split, lang, registry))
            rows.append({**turns[0], "conversations": [m for t in turns for m in t["conversations"]]})
        counts[split] = dict(sorted(Counter(r["task"] for r in rows).items()))
        for kind in ("sft", "prompt"):
            paths[f"{kind}_{split}"] = p = out / f"{kind}_{split}.jsonl"
            with open(p, "w", encoding="utf-8") as fh:
                for r in rows:
                    cols = {"task": r["task"], "lang": r["lang"], "tool": r["tool"]}
                    rec = ({"conversations": r["conversations"], "tools": schemas, **cols} if kind == "sft" else
                           {"prompt": r["conversations"][:1], "answer": r["answer"], "tools": schemas, **cols})
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    meta = {"seed": seed, "tools": list(registry.tools), "direct_share": direct_share, "questions": list(questions),
            "calc_tasks": list(calc_tasks), "counts": counts}
    (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return paths


def held_out_problems(n: int, side: str = "val", seed: int = 0,
                      calc_tasks: Sequence[str] = CALC_TASKS) -> list[dict]:
    """n held-out 4+-digit problems ({"question", "answer", "task", "lang"}) of `side`, half English, half Chinese."""
    if check_side(side) == "train":
        raise ValueError("held_out_problems: choose a held-out side (val or test)")
    registry = tool_registry(("calculator",))
    rng = random.Random(f"scratchlm-tools-eval:{seed}:{side}")
    calc = [Arithmetic(t) for t in calc_tasks]
    out = []
    for i in range(n):
        r = calc_chat(rng, rng.choice(calc), side, ("en", "zh")[i % 2], registry)
        out.append({"question": r["conversations"][0]["content"], "answer": r["answer"], "task": r["task"],
                    "lang": r["lang"]})
    return out


def _solved(problem: dict, answer: str | None) -> bool:
    """Whether `answer` (None: the run gave none) is right for `problem`."""
    return answer is not None and check_answer(problem["task"], answer, problem["answer"])


def tool_use_accuracy(llm: Any, problems: list[dict], tools: Sequence[str] = DEFAULT_TOOLS, max_steps: int = 4,
                      max_new_tokens: int = 64, votes: int = 1, temperature: float = 0.7, seed: int = 0) -> dict:
    """Final-answer accuracy on `problems` of the agent loop (the model with the tools, greedy) and of the same model
    answering alone (no tools listed), overall and per language; plus the share of agent runs that called the
    calculator and a few traces. With `votes` > 1 also "agent_vote": `votes` runs sampled at `temperature` (seeds
    seed, seed + 1, ...) vote on each answer (agent/vote.py), and "agent_sampled": the first of them alone."""
    from scratchlm.agent.loop import EnginePolicy, run_agent
    from scratchlm.agent.vote import vote_agent
    from scratchlm.data.clean import clean_messages
    from scratchlm.engine.sampling import SamplingParams

    if not problems:
        raise ValueError("tool_use_accuracy: no problems")
    registry = tool_registry(tools)
    policy = EnginePolicy(llm, max_new_tokens=max_new_tokens)
    tok = llm.tokenizer
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop_ids=list(tok.stop_ids))
    scores: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    samples = []
    for p in problems:
        trace = run_agent(policy, registry, p["question"], max_steps=max_steps)
        called = any(c.name == "calculator" for s in trace.steps for c in s.calls)
        ids, _ = tok.encode_chat(clean_messages([{"role": "user", "content": p["question"]}]),
                                 add_generation_prompt=True)
        alone = tok.decode(llm.generate([ids], params)[0], skip_special_tokens=True)
        marks = [("agent", _solved(p, trace.answer)), ("direct", _solved(p, alone)), ("called_calculator", called)]
        if votes > 1:
            vote = vote_agent(lambda i: EnginePolicy(llm, max_new_tokens, temperature, seed + i), registry,
                              p["question"], votes, answer_kind=p["task"], max_steps=max_steps)
            marks += [("agent_vote", _solved(p, vote.picked.answer)),
                      ("agent_sampled", _solved(p, vote.traces[0].answer))]
        for key, v in marks:
            scores[key]["all"].append(int(v))
            scores[key][p["lang"]].append(int(v))
        if len(samples) < 6:
            samples.append({"question": p["question"], "expected": p["answer"], "agent": trace.answer,
                            "stopped": trace.stopped, "alone": alone})
    out: dict = {"n": len(problems), "samples": samples}
    for key, by in scores.items():
        out[key] = {k: sum(v) / len(v) for k, v in sorted(by.items())}
    return out
