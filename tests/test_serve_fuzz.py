"""`scratchlm serve` as a user starts it (a subprocess on a loopback port), then schemathesis fuzzes every
operation of its own /openapi.json: no 5xx, and every status, content type and body the schema documents.

CI runs a small budget (SCHEMATHESIS_MAX_EXAMPLES, default 15 cases per operation and phase, ~20 s). A
deeper run: `SCHEMATHESIS_MAX_EXAMPLES=200 python -m pytest tests/test_serve_fuzz.py` (several minutes), or
the same `schemathesis run` command against any running `scratchlm serve` (docs/serving.md)."""

import os
import subprocess
import sys
import time

import httpx
import pytest

from serve_util import free_port

pytestmark = [pytest.mark.slow, pytest.mark.ci]

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture(scope="module")
def served(chat_run, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "scratchlm.cli", "serve", str(chat_run), "--port", str(port),
                                 "--model-name", "tiny", "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_command_answers(served):
    url, _ = served
    assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "tiny"
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "What is 2 plus 3?"}],
                                                       "temperature": 0})
    assert r.json()["choices"][0]["message"]["content"] == "5"
    assert "<!doctype html>" in httpx.get(url + "/").text.lower()  # the chat page ships with the package
    assert httpx.get(url + "/static/app.js").status_code == 200


def test_schemathesis_finds_no_server_error_and_no_schema_break(served, tmp_path):
    url, log = served
    budget = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "15")
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", url + "/openapi.json", "--checks", CHECKS,
           "--max-examples", budget, "--workers", "1", "--seed", "0", "--generation-database", "none",
           "--request-timeout", "60", "--no-color"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    tail = r.stdout[-6000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail + "\nserver log:\n" + log.read_text()[-3000:]
    assert "No issues found" in r.stdout, tail
    assert "Traceback" not in log.read_text()  # nothing went wrong inside the server either
    assert httpx.get(url + "/health").status_code == 200  # and it still serves
