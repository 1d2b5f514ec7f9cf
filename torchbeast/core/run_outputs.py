"""What a run leaves in SAVEDIR/XPID/: meta.json, logs.csv, TensorBoard events, learning_curve.png.

logs.csv has one row per learner update and is appended to when a run resumes (after cutting it
back to the checkpoint's step), so it always holds the whole history, steps never going back;
TensorBoard gets the same values. The learning curve is drawn from the same rows (read from
logs.csv once when a run resumes, then kept in memory).
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import socket
import subprocess
from importlib import metadata
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Imported with the run, not at its first checkpoint: a stop signal landing in the middle of this
# import (~1 s) would leave matplotlib half imported for the final save.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from torchbeast.core.atomic_file import replaced, write_json

LOG_FIELDS = [
    "step", "time", "sps", "episodes", "mean_episode_return", "mean_episode_step",
    "total_loss", "pg_loss", "baseline_loss", "entropy_loss", "learning_rate", "grad_norm",
    # PolyBeast only (empty for MonoBeast): env servers connected, and steps/s per host as
    # space-separated host=rate pairs (the host part of each server's address; local: unix sockets).
    "env_servers", "host_sps",
]

# CSV column -> TensorBoard tag.
_TB_TAGS = {
    "sps": "charts/sps", "mean_episode_return": "charts/episode_return",
    "mean_episode_step": "charts/episode_length", "learning_rate": "charts/learning_rate",
    "total_loss": "losses/total", "pg_loss": "losses/policy_gradient", "baseline_loss": "losses/baseline",
    "entropy_loss": "losses/entropy", "grad_norm": "losses/grad_norm", "env_servers": "charts/env_servers",
}


def _git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _versions() -> Dict[str, Optional[str]]:
    versions: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for package in ("torch", "numpy", "mujoco", "dm_control", "memory-maze", "gym", "torchbeast-mm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_meta(run_dir: str, flags: Dict[str, Any], extra: Optional[Dict[str, Any]] = None) -> None:
    """Records the flags, versions, git commit and host of a run (one entry per start)."""
    path = os.path.join(run_dir, "meta.json")
    starts: List[Dict[str, Any]] = []
    if os.path.exists(path):
        with open(path) as f:
            starts = json.load(f).get("starts", [])
    starts.append(dict(time=datetime.datetime.now().isoformat(timespec="seconds"), host=socket.gethostname(),
                       git_commit=_git_commit(), versions=_versions(), **(extra or {})))
    write_json(path, dict(flags=flags, starts=starts), sort_keys=True)


def trim_log(csv_path: str, step: int) -> int:
    """Cuts logs.csv back to the rows up to `step` (a resumed run's checkpoint), dropping a row a
    kill left half written; returns how many rows were removed. Rewritten atomically."""
    if not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0:
        return 0
    with open(csv_path, newline="") as f:
        text = f.read()
    reader = csv.DictReader(text.splitlines(keepends=True))
    rows = list(reader)
    kept = [row for row in rows if _complete(row, reader.fieldnames) and int(row["step"]) <= step]
    if len(kept) == len(rows) and text.endswith("\n"):
        return 0
    with replaced(csv_path, durable=True, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=reader.fieldnames or LOG_FIELDS)
        writer.writeheader()
        writer.writerows(kept)
    return len(rows) - len(kept)


def _complete(row: Dict[str, Any], fieldnames: Optional[Sequence[str]]) -> bool:
    if None in row or any(row.get(name) is None for name in fieldnames or ()):
        return False
    try:
        int(row["step"])
    except (KeyError, TypeError, ValueError):
        return False
    return True


class RunLogger:
    """Appends metrics to logs.csv and TensorBoard. `purge_step`: TensorBoard hides the events
    of this step and later from earlier starts of the run (a resume from a checkpoint)."""

    def __init__(self, run_dir: str, tensorboard: bool = True, purge_step: Optional[int] = None) -> None:
        self.run_dir = run_dir
        self.csv_path = os.path.join(run_dir, "logs.csv")
        new_file = not os.path.exists(self.csv_path) or os.path.getsize(self.csv_path) == 0
        if not new_file:
            _add_missing_columns(self.csv_path)
        self._file = open(self.csv_path, "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if new_file:
            self._csv.writeheader()
            self._file.flush()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"), purge_step=purge_step)

    def log(self, row: Dict[str, Any]) -> None:
        self._csv.writerow({key: _format(row.get(key)) for key in LOG_FIELDS})
        self._file.flush()
        if self._tb is not None:
            step = int(row["step"])
            for key, tag in _TB_TAGS.items():
                value = row.get(key)
                if value is not None:
                    self._tb.add_scalar(tag, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _add_missing_columns(csv_path: str) -> None:
    """Rewrites (atomically) a logs.csv whose header lacks columns of LOG_FIELDS (a run started
    before they existed), leaving them empty in its rows, so appended rows line up."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or list(reader.fieldnames) == LOG_FIELDS:
            return
        rows = list(reader)
    with replaced(csv_path, durable=True, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _format(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        # Six significant digits for metrics; timestamps and step-like values keep every unit.
        return f"{value:.3f}" if abs(value) >= 1e5 else f"{value:.6g}"
    return value


def read_log(csv_path: str) -> List[Dict[str, str]]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def read_curve(csv_path: str) -> List[Tuple[int, float]]:
    """(step, mean episode return) of the logs.csv rows where an episode ended."""
    if not os.path.exists(csv_path):
        return []
    return [(int(r["step"]), float(r["mean_episode_return"]))
            for r in read_log(csv_path) if r.get("mean_episode_return")]


_MAX_DRAWN_POINTS = 2000


def plot_learning_curve(points: Sequence[Tuple[int, float]], png_path: str, title: str = "") -> None:
    """Draws mean episode return against env steps (an empty plot, said so, before the first
    episode ends) to `png_path`, atomically.

    Each point is one update's mean over the episodes that ended in it; with many points a moving
    mean over 2% of them is drawn on top. It uses matplotlib's object API without pyplot (no
    global figure state) and draws at most ~2000 points per line, so that a redraw costs ~0.1 s
    on the main thread however long the run.
    """
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if points:
        steps = np.array([p[0] for p in points], dtype=np.float64)
        returns = np.array([p[1] for p in points], dtype=np.float64)
        window = len(returns) // 50
        if window > 1:
            cumsum = np.cumsum(np.insert(returns, 0, 0.0))
            smoothed = (cumsum[window:] - cumsum[:-window]) / window
            every = max(1, len(returns) // _MAX_DRAWN_POINTS)  # more points than pixels only cost time
            ax.plot(steps[::every], returns[::every], alpha=0.3, color="tab:blue", linewidth=0.8,
                    label="per update")
            ax.plot(steps[window - 1::every], smoothed[::every], color="tab:blue",
                    label=f"mean of {window} updates")
            ax.legend(loc="upper left")
        else:
            ax.plot(steps, returns, color="tab:blue", marker="." if len(returns) < 30 else None)
    else:
        ax.text(0.5, 0.5, "no episode has ended yet", ha="center", va="center", transform=ax.transAxes)
    ax.xaxis.set_major_formatter(EngFormatter())  # 20M rather than 2 with a 1e7 offset
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean episode return")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.11, right=0.95, bottom=0.13, top=0.91)  # fixed: tight_layout costs ~3x the drawing
    with replaced(png_path, "wb") as f:
        fig.savefig(f, format="png")
