"""The command-line front: every command is listed, has help, and user errors exit 1 with a message."""

import json
import subprocess
import sys

import pytest

from scratchlm.cli import COMMAND_MODULES, build_parser, main

from scratchlm.stages import STAGE_NAMES

COMMANDS = ["demo", "data", "tokenizer", "prepare", "model", "train", "generate", "eval", "report", "export", "import"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS:
        assert f"    {cmd}" in out


HELP_ARGVS = [[c] for c in COMMANDS if c not in ("data", "tokenizer", "model", "train", "export", "import")] + [
    ["export", "hf"], ["import", "hf"],
    ["data", "info"], ["data", "synth"], ["tokenizer", "train"], ["tokenizer", "stats"], ["model", "info"],
    *[["train", stage] for stage in STAGE_NAMES], ["train", "teacher-data"], ["train", "plot"],
]
# What `scratchlm --help` must not load (torch alone is ~1.3 s); the commands import them when they run.
HEAVY_MODULES = ("torch", "numpy", "tokenizers", "transformers")


@pytest.mark.parametrize("argv", HELP_ARGVS)
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: scratchlm " + " ".join(argv) in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_user_error_is_one_line_not_a_traceback(capsys):
    assert main(["model", "info", "no-such-preset"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no config file or preset named 'no-such-preset'") and "Traceback" not in err


def test_console_script_module_entry():
    # `python -m scratchlm.cli` is what torchrun runs; it must behave like the console script.
    r = subprocess.run([sys.executable, "-m", "scratchlm.cli", "model", "info", "debug"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "debug" in r.stdout or "param" in r.stdout.lower()


def _heavy_loaded(code: str) -> list[str]:
    """The HEAVY_MODULES that are in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_help_imports_no_torch():
    # `scratchlm --help` and every `scratchlm CMD --help`: a sys.modules check, not a timing.
    code = f"""
import contextlib, io
from scratchlm.cli import build_parser
build_parser()
for argv in [[], *{HELP_ARGVS!r}]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args([*argv, "--help"])
        except SystemExit:
            pass
"""
    assert _heavy_loaded(code) == []


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_command_module_registers_without_heavy_imports(module):
    # One module per interpreter, so that a failure names the module that imports too much at its top.
    code = (f"import argparse, importlib\n"
            f"importlib.import_module({module!r}).add_cli(argparse.ArgumentParser().add_subparsers())")
    assert _heavy_loaded(code) == []


def test_stage_registry_is_the_one_list_of_stages(capsys):
    # The train subcommands, the config's allowed objectives and make_objective all come from scratchlm/stages.py.
    from scratchlm.config import ConfigError, load_config
    from scratchlm.stages import STAGES
    from scratchlm.train.objectives import Objective

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(stage in out for stage in STAGE_NAMES)
    for name, spec in STAGES.items():
        assert load_config("debug", [f"train.objective={name}"]).train.objective == name
        assert issubclass(spec.objective_class(), Objective) and spec.objective_class().name == name
    with pytest.raises(ConfigError, match="train.objective.*'orpo'.*pretrain"):
        load_config("debug", ["train.objective=orpo"])  # not registered: the error lists what is


def test_stage_that_starts_from_a_model_needs_init_from(tmp_path, capsys):
    assert main(["train", "dpo", "--out", str(tmp_path / "r"), "--data", str(tmp_path)]) == 1
    assert "scratchlm train dpo starts from a trained model: pass --init-from RUN" in capsys.readouterr().err


# Text arguments that reach a tokenizer or an embedder: bytes that are not UTF-8 (a shell's $'a\xed\xa0\x80b', the
# CESU-8 spelling of U+D800) reach Python as lone surrogates (surrogateescape). Real subprocesses, real argv bytes.
NOT_UTF8 = b"a\xed\xa0\x80b"


def _scratchlm(*argv: str | bytes) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    env.pop("SCRATCHLM_DEBUG", None)
    return subprocess.run([sys.executable.encode(), b"-m", b"scratchlm.cli",
                           *(a if isinstance(a, bytes) else a.encode() for a in argv)],
                          capture_output=True, env=env, timeout=300)


def _one_line_usage_error(r: subprocess.CompletedProcess, name: str) -> None:
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: argument {name}: not valid Unicode text (byte 0xED at character 1 is not UTF-8)"), err


@pytest.fixture(scope="module")
def hash_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("rag")
    (root / "doc.txt").write_text("The cat sat on the mat. Dogs bark at night.", encoding="utf-8")
    r = _scratchlm("rag", "index", str(root / "doc.txt"), "--db", str(root / "r.db"), "--embedder", "hash", "--quiet")
    assert r.returncode == 0, r.stderr
    return root / "r.db"


@pytest.mark.parametrize("argv, name", [
    (["rag", "ask", "{run}", NOT_UTF8, "--db", "{db}"], "question"),
    (["rag", "search", NOT_UTF8, "--db", "{db}"], "query"),
    (["generate", "{run}", "--prompt", NOT_UTF8, "--max-new-tokens", "2"], "--prompt"),
    (["chat", "{run}", "--system", NOT_UTF8], "--system"),
])
def test_text_argument_that_is_not_utf8_is_a_one_line_usage_error(argv, name, chat_run, hash_db):
    argv = [a.format(run=chat_run, db=hash_db) if isinstance(a, str) else a for a in argv]
    _one_line_usage_error(_scratchlm(*argv), name)


def test_rag_index_refuses_a_jsonl_text_with_a_lone_surrogate(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_bytes(b'{"text": "fine"}\n{"text": "a\\ud800b"}\n')  # valid JSON, not valid Unicode
    r = _scratchlm("rag", "index", str(docs), "--db", str(tmp_path / "r.db"), "--embedder", "hash", "--quiet")
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err, err
    assert f"{docs}:2: 'text' is not valid Unicode (a lone surrogate U+D800 at character 1)" in err, err
