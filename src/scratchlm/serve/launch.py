"""`scratchlm serve` as a user starts it, from Python: a child process on a free loopback port, waited for until
/health answers, stopped on exit. The schema-fuzzing test and bench/bench_serve.py drive the server this way."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(run: str | Path, *args: str, log: str | Path | None = None, timeout: float = 120.0,
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """`scratchlm serve RUN --port P *args` in a child process → its base URL once /health answers; the server's
    output goes to `log` (a temporary file when None), which the error names if it dies or never answers."""
    with serve_child(run, *args, log=log, timeout=timeout, env=env) as (url, _):
        yield url


@contextlib.contextmanager
def serve_child(run: str | Path, *args: str, log: str | Path | None = None, timeout: float = 120.0,
                env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """serve_process's (base URL, child process): the soak test reads the server's own memory from its pid."""
    import httpx

    port = free_port()
    with contextlib.ExitStack() as stack:
        if log is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "serve.log"
        out = stack.enter_context(open(log, "w"))
        proc = subprocess.Popen([sys.executable, "-m", "scratchlm.cli", "serve", str(run), "--port", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"scratchlm serve {run} did not start within {timeout:.0f} s:\n"
                                       f"{Path(log).read_text(encoding='utf-8', errors='replace')[-3000:]}")
                time.sleep(0.2)
            yield url, proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)
