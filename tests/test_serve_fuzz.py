"""`scratchlm serve` as a user starts it (a subprocess on a loopback port), then schemathesis fuzzes every
operation of its own /openapi.json: no 5xx, and every status, content type and body the schema documents.

CI runs a small budget (SCHEMATHESIS_MAX_EXAMPLES, default 15 cases per operation and phase, ~20 s). A
deeper run: `SCHEMATHESIS_MAX_EXAMPLES=200 python -m pytest tests/test_serve_fuzz.py` (several minutes), or
the same `schemathesis run` command against any running `scratchlm serve` (docs/serving.md)."""

import os
import subprocess
import sys

import httpx
import pytest

from scratchlm.serve.launch import serve_process

pytestmark = [pytest.mark.slow, pytest.mark.ci]

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture(scope="module")
def served(chat_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve_process(chat_run, "--model-name", "tiny", "--log-level", "warning", log=log, timeout=60,
                       env={"OMP_NUM_THREADS": "1"}) as url:
        yield url, log


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
