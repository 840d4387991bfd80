"""Tools from an MCP server over stdio, through the `mcp` package's 2.x `Client`: the server is started as a
subprocess, its tools are listed and wrapped as `Tool`s (their input schemas as given), and each call goes over
the session. The client lives in an event loop on a background thread, so the agent loop stays synchronous."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import threading
from typing import Any

from scratchlm.agent.tools import Tool

CONNECT_TIMEOUT = 30.0  # seconds to start the server and list its tools
CALL_TIMEOUT = 60.0  # seconds one call may take


class McpError(RuntimeError):
    """The MCP server could not be started or listed."""


class McpServer:
    """A running MCP server (a subprocess speaking stdio) and its tools; close() stops it. Use as a context manager."""

    def __init__(self, command: str, env: dict[str, str] | None = None):
        from mcp import StdioServerParameters

        argv = shlex.split(command)
        if not argv:
            raise McpError("--mcp: give the command that starts the server, e.g. \"python -m scratchlm.agent.mcp_example\"")
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable  # the same interpreter (and environment) as the agent's
        # The server sees the agent's PYTHONPATH, so a source checkout's modules start the same way.
        extra = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
        self.command = command
        self._params = StdioServerParameters(command=argv[0], args=argv[1:], env={**extra, **(env or {})})
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="mcp-client")
        self._thread.start()
        self._stop: asyncio.Event | None = None
        self._client: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._main = asyncio.run_coroutine_threadsafe(self._run(), self._loop)
        if not self._ready.wait(CONNECT_TIMEOUT) or self._error is not None:
            self.close()
            raise McpError(f"--mcp {command!r}: the server did not start ({self._error or 'timed out'})")
        self.tools = self._list()

    async def _run(self) -> None:
        """Hold the client open (its context is entered and left in this one task, as anyio requires)."""
        from mcp import Client

        self._stop = asyncio.Event()
        try:
            async with Client(self._params) as client:
                self._client = client
                self._ready.set()
                await self._stop.wait()
        except BaseException as e:  # the caller waits on _ready: tell it why
            self._error = e
            self._ready.set()

    def _await(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _list(self) -> list[Tool]:
        listing = self._await(self._client.list_tools(), CONNECT_TIMEOUT)
        return [Tool(t.name, " ".join((t.description or "").split("\n\n")[0].split()),
                     t.input_schema or {"type": "object", "properties": {}}, self._caller(t.name), check=False)
                for t in listing.tools]

    def _caller(self, name: str) -> Any:
        def call(**arguments: Any) -> str:
            result = self._await(self._client.call_tool(name, arguments), CALL_TIMEOUT)
            text = "\n".join(getattr(c, "text", "") or f"[{getattr(c, 'type', 'content')}]" for c in result.content)
            if result.is_error:
                raise RuntimeError(text or "the MCP tool reported an error")
            return text
        return call

    def close(self) -> None:
        """Stop the session and the server process, then the loop."""
        if self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
            try:
                self._main.result(10)
            except Exception:  # already failed: nothing more to stop
                pass
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "McpServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
