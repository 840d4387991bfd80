"""`scratchlm serve` as a user starts it (a subprocess on a loopback port), then schemathesis fuzzes every
operation of its own /openapi.json: no 5xx, and every status, content type and body the schema documents. Its
hooks (tests/schemathesis_hooks.py) put lone surrogates and over-cap lengths into the strings it generates, and
the test counts, from the request bytes, that such cases were sent.

CI runs a small budget (SCHEMATHESIS_MAX_EXAMPLES, default 40 cases per operation in the fuzzing phase, ~20 s on
2 cores). A deeper run: `SCHEMATHESIS_MAX_EXAMPLES=400 python -m pytest tests/test_serve_fuzz.py` (minutes), or
the same `schemathesis run` command against any running `scratchlm serve` (docs/serving.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from scratchlm.serve.launch import serve_process

HOOKS = Path(__file__).with_name("schemathesis_hooks.py")

pytestmark = [pytest.mark.slow, pytest.mark.ci]

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
# Every warning but validation_mismatch ("an operation mostly rejected generated data") and low_valid_rate: the hooks
# make a share of the schema-valid bodies invalid on purpose, and those 400s are what the test wants.
WARNINGS = ("missing_auth,missing_test_data,base_url_mismatch,missing_deserializer,unused_openapi_auth,"
            "unsupported_regex,method_not_allowed,constants_extraction,unmatched_filter,unresolvable_reference,"
            "rate_limited,dictionary_mismatch,timeout_units")


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


def _over_cap_chars(run) -> int:
    """The server's longest text cap for `run` (what serve/handlers.py computes at start)."""
    from scratchlm.runs import load_run_config
    from scratchlm.serve.validate import max_text_chars
    from scratchlm.tokenizer.bpe import Tokenizer

    return max_text_chars(Tokenizer.load(run), load_run_config(run).model.max_seq_len)


def test_schemathesis_finds_no_server_error_and_no_schema_break(served, chat_run, tmp_path):
    """schemathesis' own generation plus tests/schemathesis_hooks.py, which puts lone surrogates and over-cap
    lengths into the string fields it generates: no 5xx, every response as documented, and the log of what went
    over the wire shows such cases were sent and reached the server's checks."""
    url, log = served
    budget = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "40")
    sent_log = tmp_path / "sent.jsonl"
    over_cap = _over_cap_chars(chat_run)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "FUZZ_SENT_LOG": str(sent_log),
           "FUZZ_OVER_CAP_CHARS": str(over_cap)}
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", url + "/openapi.json", "--checks", CHECKS,
           "--max-examples", budget, "--workers", "1", "--seed", "0", "--generation-database", "none",
           "--request-timeout", "60", "--no-color", "--warnings", WARNINGS]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=1800, env=env)
    tail = r.stdout[-6000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail + "\nserver log:\n" + log.read_text()[-3000:]
    assert "No issues found" in r.stdout, tail
    assert "Traceback" not in log.read_text()  # nothing went wrong inside the server either
    assert httpx.get(url + "/health").status_code == 200  # and it still serves

    sent = [json.loads(line) for line in sent_log.read_text().splitlines()]
    assert not [s for s in sent if s["status"] >= 500], sent
    posts = [s for s in sent if s["method"] == "POST"]
    surrogate = [s for s in posts if s["surrogate"]]
    over = [s for s in posts if s["longest"] > over_cap]
    # Counted from the request bytes: a hook that stopped widening the alphabet fails here, not silently.
    assert len(surrogate) >= 5 and len(over) >= 5, (len(posts), len(surrogate), len(over))
    # ... and they reached the checks they are meant for (not only the schema's 422 for some other field).
    assert any(s["code"] == "invalid_unicode" for s in surrogate), surrogate
    assert any(s["code"] == "context_length_exceeded" for s in over), over
    for path in ("/v1/chat/completions", "/v1/completions"):  # both text-taking operations got both kinds
        assert any(s["path"] == path for s in surrogate) and any(s["path"] == path for s in over), path
    print(f"schemathesis sent {len(sent)} requests: {len(surrogate)} with a lone surrogate, {len(over)} over the "
          f"{over_cap}-character cap")
