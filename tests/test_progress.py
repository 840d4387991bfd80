"""scratchlm.progress: a tqdm bar on a terminal; without one, plain lines at most once per interval plus a
final line, never a carriage return."""

from __future__ import annotations

import io

import pytest

from scratchlm.progress import (
    INTERVAL_ENV,
    LineProgress,
    NullProgress,
    format_duration,
    format_size,
    progress,
    progress_interval,
)


class FakeClock:
    """A clock the test advances by hand (no sleeps)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_tty_gets_plain_lines_at_most_one_per_interval():
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(600, desc="train", unit="step", stream=out, interval=5.0, clock=clock)
    for _ in range(600):
        clock.t += 1.05
        bar.update(1)
        bar.set_postfix(loss="3.1234")
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # 630 s of work at one line per ≥ 5 s, plus the final line
    assert len(lines) <= 630 / 5 + 1
    assert lines[0].startswith("train 5/600 steps (1%), 1.05 s/step, eta 10m25s") and lines[0].endswith("| loss=3.1234")
    assert lines[-1].startswith("train 600/600 steps (100%), 1.05 s/step, in 10m30s")


def test_no_line_before_the_interval_and_one_final_line_on_close():
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(10, desc="x", unit="doc", stream=out, interval=5.0, clock=clock)
    clock.t += 4.0
    bar.update(3)
    assert out.getvalue() == ""
    bar.close()
    bar.close()  # callers close in both the normal path and a `finally`
    assert out.getvalue().splitlines() == ["x 3/10 docs (30%), 1.33 s/doc, in 4s"]


def test_zero_interval_prints_every_update_with_count_and_total():
    out = io.StringIO()
    bar = progress(4, desc="tokenizer", unit="doc", stream=out, interval=0)
    assert isinstance(bar, LineProgress)
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [ln.split(",")[0] for ln in lines] == [
        "tokenizer 1/4 docs (25%)", "tokenizer 2/4 docs (50%)", "tokenizer 3/4 docs (75%)",
        "tokenizer 4/4 docs (100%)", "tokenizer 4/4 docs (100%)",
    ]
    assert "\r" not in out.getvalue()


def test_bytes_without_total_and_initial_count():
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(None, desc="prepare", unit="B", unit_scale=True, stream=out, interval=0, clock=clock)
    clock.t += 2.0
    bar.update(3 * 1024 * 1024)
    bar.set_postfix_str("1,234 docs/s")
    bar.close()
    assert out.getvalue().splitlines()[-1] == "prepare 3.0MB, 1.5MB/s, in 2s | 1,234 docs/s"
    # resumed training: the rate counts the steps done in this run only
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(100, desc="train", unit="step", initial=50, stream=out, interval=0, clock=clock)
    clock.t += 10.0
    bar.update(10)
    assert out.getvalue().splitlines() == ["train 60/100 steps (60%), 1.0 steps/s, eta 40s"]


def test_interval_from_environment(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert progress_interval() == 5.0
    monkeypatch.setenv(INTERVAL_ENV, "0.5")
    assert progress_interval() == 0.5
    assert progress(3, desc="x", stream=io.StringIO()).interval == 0.5
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=INTERVAL_ENV):
        progress_interval()


def test_terminal_gets_tqdm_and_disabled_gets_a_no_op():
    tty = FakeTTY()
    from tqdm import tqdm

    bar = progress(10, desc="x", stream=tty)
    assert isinstance(bar, tqdm)
    bar.update(10)
    bar.close()
    assert "\r" in tty.getvalue()
    null = progress(10, desc="x", enabled=False, stream=tty)
    assert isinstance(null, NullProgress)
    null.update(3), null.set_postfix(a=1), null.set_postfix_str("s"), null.close()


def test_formatting():
    assert [format_duration(s) for s in (0, 12.4, 504, 3720)] == ["0s", "12s", "8m24s", "1h02m"]
    assert [format_size(n) for n in (512, 1536, 5 * 1024**3)] == ["512B", "1.5kB", "5.0GB"]
