"""The ReAct loop: the model thinks and calls tools (Thought → Action), each call's result comes back as a `tool`
message (Observation), until it answers without a call or the step limit is reached. The chat template's tool
convention (tokenizer/tools.py) carries all of it, so a model fine-tuned on tool-use chats runs here unchanged.

A `Policy` writes the assistant's next reply from the chat so far: `EnginePolicy` generates it with a run's model
through the engine; a scripted policy (the tests') returns written replies through the same interface, so the
loop's logic is tested on the real tools either way."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from scratchlm.agent.tools import ToolRegistry
from scratchlm.tokenizer.tool_parser import parse_tool_calls
from scratchlm.tokenizer.tools import CALL_OPEN, MALFORMED_CALL

MALFORMED = MALFORMED_CALL


class ContextFull(RuntimeError):
    """The chat no longer fits the model's context with room for a reply."""


class Policy(Protocol):
    """Writes the assistant's next reply (text, calls included as the template writes them)."""

    def reply(self, messages: list[dict], tools: list[dict]) -> str:
        """The next assistant turn's text for `messages` with `tools` listed."""
        ...


class EnginePolicy:
    """The model of a run, through the engine (greedy unless a temperature is given)."""

    def __init__(self, llm: Any, max_new_tokens: int = 256, temperature: float = 0.0, seed: int | None = None):
        if llm.tokenizer is None:
            raise ValueError("the agent's run has no tokenizer.json: it cannot encode a chat")
        self.llm, self.max_new_tokens, self.temperature, self.seed = llm, max_new_tokens, temperature, seed

    def reply(self, messages: list[dict], tools: list[dict]) -> str:
        """Generate the next reply; ContextFull when the chat leaves no room for `max_new_tokens`."""
        from scratchlm.data.clean import clean_messages
        from scratchlm.engine.sampling import SamplingParams

        tok = self.llm.tokenizer
        ids, _ = tok.encode_chat(clean_messages(messages), add_generation_prompt=True, tools=tools or None)
        room = self.llm.config.max_seq_len - len(ids)
        if room < min(self.max_new_tokens, 16):
            raise ContextFull(f"the chat has {len(ids)} tokens (tools listed included); the model's context is "
                              f"{self.llm.config.max_seq_len}")
        params = SamplingParams(temperature=self.temperature, max_new_tokens=min(self.max_new_tokens, room),
                                stop_ids=list(tok.stop_ids), seed=self.seed)
        return tok.decode(self.llm.generate([ids], params)[0])


class ScriptedPolicy:
    """Replies written in advance, one per step (the loop's tests); `seen` keeps each chat it was shown."""

    def __init__(self, replies: Sequence[str]):
        self.replies = list(replies)
        self.seen: list[list[dict]] = []

    def reply(self, messages: list[dict], tools: list[dict]) -> str:
        """The next written reply (an empty one when they run out)."""
        self.seen.append([dict(m) for m in messages])
        return self.replies.pop(0) if self.replies else ""


@dataclass
class CallRecord:
    """One Action and its Observation."""

    name: str
    arguments: str
    observation: str
    error: bool


@dataclass
class Step:
    """One assistant turn: its thought, the calls it made with their results, and its raw text."""

    step: int
    thought: str
    calls: list[CallRecord] = field(default_factory=list)
    text: str = ""


@dataclass
class Trace:
    """A whole run: the task, every step, the answer and why the loop stopped (answer, step_limit, context_full)."""

    task: str
    tools: list[str]
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None
    stopped: str = "answer"
    note: str = ""  # why it stopped, when not by an answer
    seconds: float = 0.0

    def to_json(self) -> dict:
        """The trace as plain JSON data."""
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        """Write the trace as JSON (UTF-8, indented)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path


def _split_thought(text: str) -> tuple[str, str]:
    """(the <think> block's text, the rest) of a reply."""
    s = text.lstrip()
    if s.startswith("<think>"):
        inner, sep, rest = s[len("<think>"):].partition("</think>")
        return (inner.strip(), rest.lstrip("\n")) if sep else (inner.strip(), "")
    return "", text


def run_agent(policy: Policy, registry: ToolRegistry, task: str, max_steps: int = 6,
              system: str | None = None) -> Trace:
    """Run the Thought → Action → Observation loop on `task` for at most `max_steps` replies. With no `system` text
    the system turn holds only the tools (what tool-use SFT chats look like)."""
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be >= 1")
    t0 = time.perf_counter()
    tools = registry.schemas()
    trace = Trace(task=task, tools=list(registry.tools))
    messages: list[dict] = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": task}]
    for k in range(1, max_steps + 1):
        try:
            text = policy.reply(messages, tools)
        except ContextFull as e:
            trace.stopped, trace.note = "context_full", str(e)
            break
        think, rest = _split_thought(text)
        content, calls = parse_tool_calls(rest)
        step = Step(step=k, thought="\n".join(x for x in (think, content if calls else "") if x), text=text)
        trace.steps.append(step)
        if not calls and CALL_OPEN not in content:  # no Action: this is the answer
            trace.answer = content.strip()
            break
        if not calls:  # a <tool_call> block that could not be read: the model is told how to write one
            messages.append({"role": "assistant", "content": text})
            messages.append({"role": "tool", "content": MALFORMED})
            step.calls.append(CallRecord("?", content[content.find(CALL_OPEN):], MALFORMED, True))
            continue
        messages.append({"role": "assistant", "content": content,
                         "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in calls]})
        for c in calls:
            obs = registry.call(c.name, c.arguments)
            step.calls.append(CallRecord(c.name, c.arguments, obs.text, obs.error))
            messages.append({"role": "tool", "content": obs.text})
    else:
        trace.stopped, trace.note = "step_limit", f"no answer after {max_steps} steps"
    trace.seconds = round(time.perf_counter() - t0, 3)
    return trace


def print_trace(trace: Trace, console: Any = None) -> None:
    """The trace as Rich panels: each step's thought, actions and observations, then the answer."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    console = console or Console()
    console.print(Panel(Text(trace.task), title="task", subtitle="tools: " + ", ".join(trace.tools)))
    for s in trace.steps:
        body = Text()
        if s.thought:
            body.append("Thought: ", style="bold cyan").append(s.thought + "\n")
        for c in s.calls:
            body.append("Action: ", style="bold yellow").append(f"{c.name}({c.arguments})\n")
            body.append("Observation: ", style="bold red" if c.error else "bold green").append(c.observation + "\n")
        if not s.calls:
            body.append("Answer: ", style="bold magenta").append(trace.answer or "")
        console.print(Panel(body, title=f"step {s.step}"))
    if trace.stopped != "answer":
        console.print(f"[bold red]stopped: {trace.stopped}[/] ({trace.note}) after {len(trace.steps)} steps "
                      f"({trace.seconds:.1f} s)")
    else:
        console.print(f"[bold]answer:[/] {trace.answer}  ({len(trace.steps)} steps, {trace.seconds:.1f} s)")
