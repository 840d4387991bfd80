"""The command-line front: every command is listed, has help, and user errors exit 1 with a message."""

import subprocess
import sys

import pytest

from scratchlm.cli import build_parser, main

COMMANDS = ["demo", "data", "tokenizer", "prepare", "model", "train", "generate"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS:
        assert f"    {cmd}" in out


@pytest.mark.parametrize(
    "argv",
    [[c] for c in COMMANDS if c not in ("data", "tokenizer", "model", "train")]
    + [["data", "info"], ["data", "synth"], ["tokenizer", "train"], ["tokenizer", "stats"], ["model", "info"],
       ["train", "pretrain"], ["train", "sft"], ["train", "plot"]],
)
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
