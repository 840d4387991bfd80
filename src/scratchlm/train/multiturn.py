"""Multi-turn tool-use rollouts through the engine, for agentic RL (agent/rl.py's `scratchlm train agent`).

Each prompt is sampled G times; every sample is a small agent run: the model writes a reply (sampled by the
engine, G samples of a prompt sharing turn 1's prefill), the reply's tool calls are parsed (tokenizer/tool_parser.py)
and run, their results come back as `tool` messages, and the next reply is sampled from the chat so far, for at most
`max_turns` replies. A reply without a call is the answer; a `<tool_call>` block that cannot be read becomes an
error observation (as in agent/loop.py's `run_agent`), never an exception.

Tokens: every turn's prompt is `encode_chat(chat so far, add_generation_prompt=True, tools=...)`, exactly what
agent/loop.py's `EnginePolicy` feeds the engine at inference, and the trajectory is `encode_chat` of the final chat,
each assistant message holding the text the model wrote. Its loss mask is encode_chat's own: 1 on the model's
replies (calls included) and their `<|im_end|>`, 0 on the system turn with the tools, the user's question, every
tool result (rendered in a user turn) and the template's scaffolding. A reply cut at max_new_tokens ends the
trajectory, and the `<|im_end|>` the template would add after it is dropped (the model never wrote it). Training on
the re-encoded chat rather than the sampled ids keeps one tokenisation for prompts and targets (the two differ only
where a sample was not BPE's canonical split of its own text); the old log-probs are taken on these rows, so the
ratio is consistent either way.

The tools come in as a callable (`run_tool(name, arguments) -> (text, is_error)`): train/ sits below agent/, whose
`ToolRegistry` is what agent/rl.py passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from scratchlm.tokenizer.tool_parser import parse_tool_calls
from scratchlm.tokenizer.tools import CALL_OPEN, MALFORMED_CALL

MALFORMED = MALFORMED_CALL
MIN_ROOM = 16  # a turn needs at least this many free context tokens to be sampled

ToolFn = Callable[[str, str], tuple[str, bool]]


@dataclass
class Trajectory:
    """One sample's agent run: the chat it built, how it ended, its calls, and its training tokens."""

    messages: list[dict]  # the prompt's messages, then each reply and tool result
    prompt_len: int  # how many of `messages` are the prompt
    replies: list[list[int]] = field(default_factory=list)  # the sampled ids of each reply (stop id kept)
    answer: str | None = None  # the final reply's text when it made no call
    stopped: str = "answer"  # answer | turn_limit | length (a reply cut at max_new_tokens) | context_full
    calls: int = 0
    bad_calls: int = 0  # unreadable calls and calls whose result was an error
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)

    @property
    def generated_tokens(self) -> int:
        """Tokens the model sampled over all its replies."""
        return sum(len(r) for r in self.replies)


def chat_of_prompt(tokenizer: Any, ids: Sequence[int]) -> list[dict]:
    """The messages of a `prepare --kind prompt` prompt (ids ending with the assistant generation prompt): split at
    the template's control ids, which plain content never produces, so any content comes back exactly."""
    ids = [int(t) for t in ids]
    out: list[dict] = []
    starts = [i for i, t in enumerate(ids) if t == tokenizer.im_start_id]
    for s in starts:
        end = next((j for j in range(s + 1, len(ids)) if ids[j] == tokenizer.eos_id), None)
        if end is None:  # the generation prompt: nothing after it
            break
        role, _, content = tokenizer.decode(ids[s + 1:end]).partition("\n")
        out.append({"role": role, "content": content})
    if not out:
        raise ValueError("chat_of_prompt: the prompt holds no complete ChatML turn")
    return out


def _split_thought(text: str) -> str:
    """The reply less a leading <think> block (calls are read after it, as the agent loop reads them)."""
    s = text.lstrip()
    if s.startswith("<think>"):
        _, sep, rest = s[len("<think>"):].partition("</think>")
        return rest.lstrip("\n") if sep else ""
    return text


def _observations(text: str, run_tool: ToolFn, traj: Trajectory, run: bool = True) -> list[dict] | None:
    """The tool messages answering this reply, or None when the reply is an answer (no call); with `run` False
    (the last turn) the calls are neither run nor counted: nothing would read their results."""
    content, calls = parse_tool_calls(_split_thought(text))
    if not calls and CALL_OPEN not in content:
        return None
    if not run:
        return []
    if not calls:  # a <tool_call> block that could not be read: the model is told how to write one
        traj.calls += 1
        traj.bad_calls += 1
        return [{"role": "tool", "content": MALFORMED}]
    out = []
    for c in calls:
        obs, error = run_tool(c.name, c.arguments)
        traj.calls += 1
        traj.bad_calls += int(error)
        out.append({"role": "tool", "content": obs})
    return out


def finish_trajectory(tokenizer: Any, traj: Trajectory, tools: list[dict] | None) -> Trajectory:
    """Fill `ids` / `mask` from the chat (see the module doc)."""
    ids, mask = tokenizer.encode_chat(traj.messages, tools=tools or None)
    if traj.stopped == "length":  # the last reply was cut: its end of turn was the template's, not the model's
        n = 1 + len(tokenizer.encode("\n"))
        ids, mask = ids[:-n], mask[:-n]
    traj.ids, traj.mask = list(ids), list(mask)
    return traj


def multi_turn_rollout(engine: Any, tokenizer: Any, chats: Sequence[list[dict]], tools: list[dict],
                       run_tool: ToolFn, num_generations: int, sampling: Callable[[int, int], Any],
                       max_turns: int = 3, max_new_tokens: int = 64, seed: int = 0) -> list[Trajectory]:
    """`num_generations` agent runs of each chat (G consecutive trajectories per chat), at most `max_turns` replies
    each. `sampling(seed, max_new_tokens)` gives the engine's SamplingParams; prompt k's first replies are seeded
    seed + k·G (+ i for its sample i, as the engine seeds n samples), later turns seed + turn·1_000_003 + row."""
    if max_turns < 1:
        raise ValueError(f"max_turns={max_turns} must be >= 1")
    G = num_generations
    trajs = [Trajectory([dict(m) for m in chat], len(chat)) for chat in chats for _ in range(G)]
    max_len = int(engine.max_seq_len)
    active = list(range(len(trajs)))
    for turn in range(max_turns):
        jobs = []  # (rows, handle)
        if turn == 0:  # the G samples of a prompt share one prefill
            for k, chat in enumerate(chats):
                rows = list(range(k * G, (k + 1) * G))
                prompt, _ = tokenizer.encode_chat(chat, add_generation_prompt=True, tools=tools or None)
                room = max_len - len(prompt)
                if room < MIN_ROOM:
                    for r in rows:
                        trajs[r].stopped = "context_full"
                    continue
                sp = sampling(seed + k * G, min(max_new_tokens, room))
                jobs.append((rows, engine.submit(prompt, sp, n=G)))
        else:
            for r in active:
                t = trajs[r]
                prompt, _ = tokenizer.encode_chat(t.messages, add_generation_prompt=True, tools=tools or None)
                room = max_len - len(prompt)
                if room < MIN_ROOM:
                    t.stopped = "context_full"
                    continue
                sp = sampling(seed + turn * 1_000_003 + r, min(max_new_tokens, room))
                jobs.append(([r], engine.submit(prompt, sp, n=1)))
        engine.run_until_done([h for _, h in jobs])
        still = []
        for rows, h in jobs:
            for r, out, why in zip(rows, h.token_ids, h.finish_reasons):
                t = trajs[r]
                t.replies.append(list(out))
                body = out[:-1] if why == "stop" and out and out[-1] in tokenizer.stop_ids else out
                text = tokenizer.decode(body)
                t.messages.append({"role": "assistant", "content": text})
                if why != "stop":  # cut at max_new_tokens (or the context): no call of it is run
                    t.stopped = "length"
                    continue
                obs = _observations(text, run_tool, t, run=turn < max_turns - 1)
                if obs is None:
                    t.answer, t.stopped = _split_thought(text).strip(), "answer"
                elif turn == max_turns - 1:  # the last reply may not call again: nothing would read the result
                    t.stopped = "turn_limit"
                else:
                    t.messages.extend(obs)
                    still.append(r)
        active = still
    return [finish_trajectory(tokenizer, t, tools) for t in trajs]


def trajectory_rows(trajs: Sequence[Trajectory]) -> list[Any]:
    """The trajectories as `train/batches.py` rows (ids with their loss mask), for `rows_batch(..., use_mask=True)`."""
    from scratchlm.train.batches import Row

    return [Row(np.asarray(t.ids, dtype=np.int64), np.asarray(t.mask, dtype=np.int64), None) for t in trajs]
