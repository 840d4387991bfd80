"""Progress reporting for every long step (prepare, tokenizer training, the training loop).

On a terminal `progress(...)` is a tqdm bar. Without one (stderr redirected to a file or a pipe: a
batch job, `nohup`, CI) a redrawn bar is a wall of carriage returns, so it is a `LineProgress`
instead: one plain line every few seconds and one at the end, e.g.
    train 120/600 steps (20%) 1.05 s/step, eta 8m24s | loss=3.1234
The interval is `SCRATCHLM_PROGRESS_INTERVAL` seconds (default 5). Both kinds share the small
interface the callers use: update(n), set_postfix(**kw), set_postfix_str(s), set_description(s),
write(msg), close().
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, TextIO

DEFAULT_INTERVAL = 5.0
INTERVAL_ENV = "SCRATCHLM_PROGRESS_INTERVAL"


def progress(
    total: int | None = None,
    *,
    desc: str,
    unit: str = "item",
    initial: int = 0,
    unit_scale: bool = False,
    enabled: bool = True,
    stream: TextIO | None = None,
    interval: float | None = None,
) -> Any:
    """A tqdm bar when `stream` (default stderr) is a terminal, else a `LineProgress`; a no-op when disabled."""
    if not enabled:
        return NullProgress()
    stream = sys.stderr if stream is None else stream
    if is_interactive(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                    unit_divisor=1024 if unit_scale else 1000, dynamic_ncols=True, file=stream)
    return LineProgress(total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale, stream=stream,
                        interval=progress_interval() if interval is None else interval)


def is_interactive(stream: TextIO | None = None) -> bool:
    """Whether a redrawn bar can be shown: the stream is a terminal, or this is a Jupyter kernel (tqdm's widget)."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return "ipykernel" in sys.modules


def progress_interval() -> float:
    """Seconds between plain progress lines: $SCRATCHLM_PROGRESS_INTERVAL, default 5."""
    raw = os.environ.get(INTERVAL_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected a number of seconds >= 0")
    return value


class NullProgress:
    """Stands in for a disabled bar: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        pass

    def write(self, msg: str) -> None:
        print(msg)

    def close(self) -> None:
        pass


class LineProgress:
    """Progress as plain lines: at most one per `interval` seconds while updating, and one on close."""

    def __init__(self, total: int | None = None, *, desc: str, unit: str = "item", initial: int = 0,
                 unit_scale: bool = False, stream: TextIO | None = None, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = self.initial = initial
        self.stream = sys.stderr if stream is None else stream
        self.interval = interval
        self.clock = clock
        self.start = self.last = clock()
        self.postfix = ""
        self.closed = False

    def update(self, n: int = 1) -> None:
        """Count `n` more; print a line when `interval` has passed since the last one."""
        self.n += n
        now = self.clock()
        if not self.closed and now - self.last >= self.interval:
            self.last = now
            self._emit(self.line(now))

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Show `key=value` pairs after the counts (tqdm's signature)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Show `s` after the counts."""
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Change the leading label."""
        self.desc = desc or ""

    def write(self, msg: str) -> None:
        """Print a message line to stdout (where tqdm.write prints)."""
        print(msg, flush=True)

    def close(self) -> None:
        """Print the final line (once, however often close is called)."""
        if self.closed:
            return
        self.closed = True
        self._emit(self.line(self.clock(), final=True))

    def line(self, now: float, final: bool = False) -> str:
        """The progress line: label, count/total (percent), rate, eta or elapsed time, postfix."""
        done = self.n - self.initial
        elapsed = max(now - self.start, 0.0)
        counts = self._count(self.n) + (f"/{self._count(self.total)}" if self.total else "")
        if not self.unit_scale:
            counts += f" {self.unit}s"
        if self.total:
            counts += f" ({100 * self.n / self.total:.0f}%)"
        parts = [f"{self.desc} {counts}"]
        if done > 0 and elapsed > 0:
            parts.append(self._rate(done / elapsed))
            if final:
                parts.append(f"in {format_duration(elapsed)}")
            elif self.total and self.n < self.total:
                parts.append(f"eta {format_duration((self.total - self.n) * elapsed / done)}")
        text = ", ".join(parts)
        return f"{text} | {self.postfix}" if self.postfix else text

    def _count(self, n: float) -> str:
        return format_size(n, self.unit) if self.unit_scale else f"{n:,}"

    def _rate(self, per_s: float) -> str:
        if self.unit_scale:
            return f"{format_size(per_s, self.unit)}/s"
        if per_s < 1:  # slow steps read better as seconds per step
            return f"{1 / per_s:.2f} s/{self.unit}"
        return f"{per_s:,.{0 if per_s >= 100 else 1}f} {self.unit}s/s"

    def _emit(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not stop the work being reported
            pass

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def format_duration(seconds: float) -> str:
    """`8m24s`, `1h02m`, `12s`."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_size(n: float, unit: str = "B") -> str:
    """`512B`, `1.5kB`, `12.3MB` (1024-based, as tqdm's unit_scale with unit_divisor=1024 shows them)."""
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1024 or prefix == "T":
            return f"{n:.0f}{unit}" if prefix == "" else f"{n:.1f}{prefix}{unit}"
        n /= 1024
    return f"{n:.1f}T{unit}"  # pragma: no cover (the loop returns at "T")
