"""`scratchlm agent RUN "task"` as a library call: the tools assembled (built-ins and any MCP servers'), the run's
model behind an `EnginePolicy`, the loop, the trace printed and optionally written as JSON."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

from scratchlm.agent.builtin import builtin_tools
from scratchlm.agent.loop import EnginePolicy, Trace, print_trace, run_agent
from scratchlm.agent.mcp_tools import McpServer
from scratchlm.agent.tools import ToolRegistry
from scratchlm.agent.vote import vote_agent


def open_tools(stack: ExitStack, names: Sequence[str], rag_db: str | Path | None = None,
               files_root: str | Path | None = None, mcp: Sequence[str] = ()) -> ToolRegistry:
    """The registry of the named built-ins plus every tool of each MCP server command (servers closed by `stack`)."""
    registry = ToolRegistry(builtin_tools(list(names), rag_db=rag_db, files_root=files_root))
    for command in mcp:
        server = stack.enter_context(McpServer(command))
        for tool in server.tools:
            registry.add(tool)
    if not registry.tools:
        raise ValueError("the agent has no tools: name some with --tools or add an MCP server with --mcp")
    return registry


def agent_task(run_dir: str | Path, task: str, tools: Sequence[str] = ("calculator", "date"),
               rag_db: str | Path | None = None, files_root: str | Path | None = None, mcp: Sequence[str] = (),
               max_steps: int = 6, max_new_tokens: int = 256, temperature: float = 0.0, seed: int | None = None,
               device: str = "auto", json_path: str | Path | None = None, quiet: bool = False,
               system: str | None = None, votes: int = 1, answer_kind: str = "text") -> Trace:
    """Run the agent on `task` with a run's model; print the trace (unless quiet) and write it to `json_path`. With
    `votes` > 1, that many sampled runs (seeds seed, seed + 1, ...) vote on the answer (agent/vote.py); the picked
    run's trace is printed and returned, and the JSON holds the vote and every run."""
    from scratchlm.engine.offline import LLM

    if votes < 1:
        raise ValueError(f"--self-consistency {votes}: give at least 1 run")
    if votes > 1 and temperature <= 0:
        raise ValueError(f"--self-consistency {votes}: greedy runs would all be the same; give --temperature > 0 "
                         "(e.g. 0.7)")
    with ExitStack() as stack:
        registry = open_tools(stack, tools, rag_db, files_root, mcp)
        llm = LLM.from_run(run_dir, device)
        if votes > 1:
            base = 0 if seed is None else seed
            vote = vote_agent(lambda i: EnginePolicy(llm, max_new_tokens, temperature, base + i), registry, task,
                              votes, answer_kind=answer_kind, max_steps=max_steps, system=system)
            trace = vote.picked
        else:
            vote = None
            trace = run_agent(EnginePolicy(llm, max_new_tokens, temperature, seed), registry, task,
                              max_steps=max_steps, system=system)
    if not quiet:
        if vote is not None:
            print(f"{votes} runs, answers: {vote.answers}; votes: {vote.votes}; picked run {vote.index}")
        print_trace(trace)
    if json_path is not None:
        (vote or trace).write(json_path)
    return trace
