"""What a run leaves in SAVEDIR/XPID/: meta.json, logs.csv, TensorBoard events, learning_curve.png.

logs.csv has one row per learner update and is appended to when a run resumes, so it always
holds the whole history. The learning curve is re-drawn from it at every checkpoint.
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
from typing import Any, Dict, List, Optional

LOG_FIELDS = [
    "step", "time", "sps", "episodes", "mean_episode_return", "mean_episode_step",
    "total_loss", "pg_loss", "baseline_loss", "entropy_loss", "learning_rate", "grad_norm",
]

# CSV column -> TensorBoard tag.
_TB_TAGS = {
    "sps": "charts/sps", "mean_episode_return": "charts/episode_return",
    "mean_episode_step": "charts/episode_length", "learning_rate": "charts/learning_rate",
    "total_loss": "losses/total", "pg_loss": "losses/policy_gradient", "baseline_loss": "losses/baseline",
    "entropy_loss": "losses/entropy", "grad_norm": "losses/grad_norm",
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
    meta = dict(flags=flags, starts=starts)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


class RunLogger:
    """Appends metrics to logs.csv and TensorBoard."""

    def __init__(self, run_dir: str, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.csv_path = os.path.join(run_dir, "logs.csv")
        new_file = not os.path.exists(self.csv_path) or os.path.getsize(self.csv_path) == 0
        self._file = open(self.csv_path, "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if new_file:
            self._csv.writeheader()
            self._file.flush()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"))

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


def plot_learning_curve(csv_path: str, png_path: str, title: str = "") -> None:
    """Draws mean episode return against env steps from logs.csv (an empty plot, said so, before
    the first episode ends)."""
    rows = [r for r in read_log(csv_path) if r.get("mean_episode_return")]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows]
    returns = [float(r["mean_episode_return"]) for r in rows]
    window = max(1, len(returns) // 50)
    smoothed = [sum(returns[max(0, i - window + 1): i + 1]) / len(returns[max(0, i - window + 1): i + 1])
                for i in range(len(returns))]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if rows:
        ax.plot(steps, returns, alpha=0.3, color="tab:blue", label="per update")
        ax.plot(steps, smoothed, color="tab:blue", label=f"mean of {window}")
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no episode has ended yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
