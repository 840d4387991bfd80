"""The terminal chat of `scratchlm chat`: answers stream as they are generated (reasoning dimmed apart from
the answer), the conversation is kept within the context window (oldest exchanges dropped, with a notice),
and slash commands change the session. `chat_loop` takes its input and console as arguments so a test can
drive it with a script."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from scratchlm.serve.prompt import fit_history
from scratchlm.serve.reasoning import ThinkSplitter

HELP = ("commands: /reset (forget the conversation) · /system TEXT (set the system prompt; empty clears it) · "
        "/think on|off · /exit")


class ChatSession:
    """The state of one terminal conversation: system prompt, turns, thinking switch."""

    def __init__(self, system: str | None = None, think: bool = True):
        self.system, self.think = system, think
        self.turns: list[dict] = []

    def command(self, line: str) -> str | None:
        """Apply a slash command; returns the message to show, or None to exit."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return None
        if name == "/reset":
            self.turns = []
            return "(conversation cleared)"
        if name == "/system":
            self.system = arg or None
            self.turns = []  # the old turns answered another system prompt
            return f"(system prompt set: {arg!r}; conversation cleared)" if arg else "(system prompt cleared)"
        if name == "/think":
            if arg not in ("on", "off"):
                return "usage: /think on|off"
            self.think = arg == "on"
            return f"(thinking {arg})"
        return f"unknown command {name!r}; {HELP}"


def chat_loop(engine: Any, tokenizer: Any, params: Any, system: str | None = None, think: bool = True,
              read_line: Callable[[str], str] = input, console: Any = None) -> ChatSession:
    """Read lines until /exit or end of input, answering each message with a streamed reply."""
    from rich.console import Console

    console = console or Console(highlight=False)
    session = ChatSession(system, think)
    console.print(f"[bold]scratchlm chat[/bold] · context {engine.max_seq_len} tokens · {HELP}")
    while True:
        try:
            line = read_line("\n> ")
        except EOFError:
            break
        if not line.strip():
            continue
        if line.startswith("/"):
            message = session.command(line)
            if message is None:
                break
            console.print(message, style="cyan", markup=False)
            continue
        reply = answer(engine, tokenizer, params, session, line, console)
        if reply is not None:
            session.turns.append({"role": "assistant", "content": reply})
    return session


def answer(engine: Any, tokenizer: Any, params: Any, session: ChatSession, text: str, console: Any) -> str | None:
    """Stream the model's reply to `text`; returns the answer (reasoning left out of the history)."""
    from scratchlm.engine import PromptTooLong

    session.turns.append({"role": "user", "content": text})
    # Keep room for the answer: the prompt may use what max_new_tokens leaves of the context (at least half).
    budget = engine.max_seq_len - min(params.max_new_tokens, engine.max_seq_len // 2)
    ids, dropped = fit_history(tokenizer, session.system, session.turns, budget, session.think)
    if dropped:
        session.turns = session.turns[dropped:]
        console.print(f"(dropped the {dropped} oldest message{'s' * (dropped > 1)} to fit the "
                      f"{engine.max_seq_len}-token context)", style="yellow", markup=False)
    turn = dataclasses.replace(params, max_new_tokens=max(1, min(params.max_new_tokens, engine.max_seq_len - len(ids))),
                               stop_ids=list(tokenizer.stop_ids))
    try:
        handle = engine.submit(ids, turn)
    except PromptTooLong as e:
        session.turns.pop()
        console.print(f"(message too long: {e}; /reset or send a shorter one)", style="red", markup=False)
        return None
    splitter = ThinkSplitter()
    content, in_reasoning = "", False
    try:
        for ev in handle:
            r, c = splitter.feed(ev.text)
            if ev.finish_reason is not None:
                r2, c2 = splitter.finish()
                r, c = r + r2, c + c2
            if r:
                if not in_reasoning:
                    console.print("thinking: ", style="dim", end="")
                    in_reasoning = True
                console.print(r, style="dim italic", end="", markup=False)
            if c:
                if in_reasoning:
                    console.print()
                    in_reasoning = False
                console.print(c, end="", markup=False)
                content += c
            if ev.finish_reason == "length":
                console.print(" …(max tokens reached)", style="yellow", end="", markup=False)
    except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
        handle.cancel()
        console.print(" (stopped)", style="yellow", end="")
    console.print()
    return content
