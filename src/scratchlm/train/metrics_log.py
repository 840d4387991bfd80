"""What a training run logs: metrics.jsonl (and tensorboard) on the main process, the resident memory each log
step records, and loss.png drawn from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.config import ConfigError
from scratchlm.runs import METRICS_FILE, append_metrics, read_metrics, write_metrics


def rss_mb() -> float | None:
    """This process's resident set size in MB now (not the peak): /proc/self/status, else psutil, else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**20


class MetricsLog:
    """metrics.jsonl (append, one JSON object per line) and optional tensorboard, on rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None, tensorboard: bool) -> None:
        """Start (or, resuming at resume_step, trim) metrics.jsonl and the tensorboard writer."""
        self.enabled = enabled
        self.out_dir = out_dir
        self.tb = None
        if not enabled:
            return
        if resume_step is None:
            write_metrics(out_dir, [])
        elif (out_dir / METRICS_FILE).exists():
            # drop lines logged after the checkpoint we resume from: they will be logged again
            write_metrics(out_dir, [r for r in read_metrics(out_dir) if r.get("step", 0) <= resume_step])
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("train.tensorboard=true needs the tensorboard package: "
                                  "pip install 'scratchlm[tensorboard]'") from e
            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (a dict with "step") to metrics.jsonl and tensorboard."""
        if not self.enabled:
            return
        append_metrics(self.out_dir, record)
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        """Flush and close tensorboard."""
        if self.tb is not None:
            self.tb.close()


def plot_metrics(run_dir: str | Path) -> Path:
    """Draw loss.png (train loss, and val loss when logged) from a run's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics to plot (is {run_dir} a run folder?)")
    train_pts, val_pts = [], []
    for rec in read_metrics(run_dir):
        if "loss" in rec:
            train_pts.append((rec["step"], rec["loss"]))
        if "val_loss" in rec:
            val_pts.append((rec["step"], rec["val_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    if train_pts:
        ax.plot(*zip(*train_pts), label="train loss", lw=1)
    if val_pts:
        ax.plot(*zip(*val_pts), "o-", label="val loss", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
