"""`scratchlm agent RUN "task"`: argparse only; the work is scratchlm.agent.run.agent_task."""

from __future__ import annotations

import argparse

EPILOG = """\
The model runs a Thought -> Action -> Observation loop: it may call a tool with
<tool_call>{"name": ..., "arguments": {...}}</tool_call>, the result comes back as a tool message, and the
loop ends when it answers without a call or after --max-steps replies. Bad arguments and unknown tools come
back to the model as error observations. Built-in tools:
  calculator  exact arithmetic on a safe parser (numbers, + - * / // % **, parentheses; never eval)
  date        today's date and weekday
  files       read_file / list_files inside --files-root only (no '..', absolute paths or links out)
  rag         search over a `scratchlm rag index` database (--rag-db)
An MCP server's tools are added with --mcp "COMMAND ARGS" (stdio), e.g. the shipped example:
  scratchlm agent runs/sft "How many words are in 'the cat sat'?" --mcp "python -m scratchlm.agent.mcp_example"
See docs/tools.md."""


def _cmd_agent(args: argparse.Namespace) -> int:
    from scratchlm.agent.run import agent_task
    from scratchlm.engine.cli import check_text_arg

    check_text_arg(args.task, "task")
    tools = [t for t in args.tools.split(",") if t.strip()] if args.tools else []
    trace = agent_task(args.run, args.task, tools=[t.strip() for t in tools], rag_db=args.rag_db,
                       files_root=args.files_root, mcp=args.mcp or [], max_steps=args.max_steps,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                       device=args.device, json_path=args.json, system=args.system, votes=args.self_consistency,
                       answer_kind=args.answer)
    return 0 if trace.stopped == "answer" else 3


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `scratchlm agent`."""
    p = subparsers.add_parser("agent", help="a ReAct agent: the model calls tools (calculator, date, files, rag, MCP)",
                              description="Run a task with a chat run's model calling tools.", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="a chat run folder (SFT or later)")
    p.add_argument("task", help="what the agent should do or answer")
    p.add_argument("--tools", default="calculator,date",
                   help="comma-separated built-ins: calculator,date,files,rag (default calculator,date; '' for none)")
    p.add_argument("--rag-db", default=None, metavar="DB", help="the database the rag tool searches")
    p.add_argument("--files-root", default=None, metavar="DIR", help="the one folder the files tool may read")
    p.add_argument("--mcp", action="append", metavar="CMD", help="an MCP server to start over stdio (repeatable)")
    p.add_argument("--system", default=None, help="a system prompt before the tools (default: the tools alone)")
    p.add_argument("--max-steps", type=int, default=6, help="model replies at most (default 6)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per reply at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--self-consistency", type=int, default=1, metavar="N",
                   help="N sampled runs (seeds --seed, --seed+1, ...; needs --temperature > 0) vote on the answer; "
                        "--json then holds the vote and every run (default 1: one run)")
    p.add_argument("--answer", default="text", metavar="KIND",
                   help="how the vote reads an answer: text (normalised), number, or a task name such as add4")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the trace as JSON")
    p.set_defaults(func=_cmd_agent)
