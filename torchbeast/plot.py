"""Figures of several runs: learning curves grouped by a flag, and the evaluation table as bars.

    python -m torchbeast.plot --savedir logs --group_by posemb
    python -m torchbeast.plot --xpids gt-s1 gt-s2 none-s1 none-s2 --group_by posemb --smooth 50000
    python -m torchbeast.plot --savedir logs --group_by posemb pos_noise --evaluation logs/evaluation/evaluation.json

Learning curves: each run's logs.csv gives the mean return of the episodes that ended in each
update; a run's curve at step s is the mean over the episodes that ended in the `--smooth` env
steps up to s. Runs are grouped by the values of the `--group_by` flags in their meta.json, and
each group is drawn as the mean over its runs with a band (min-max or standard error) on a
common step grid, up to the shortest run of the group. One figure per env (PNG and SVG), and a
table (printed, and final_returns_ENV.csv) of every group at the step where the env's shortest
run ends: the mean, min and max over its runs of the return in the last `--smooth` steps.

Evaluation: the `evaluation.json` of `python -m torchbeast.evaluate` (`{"results": [{"env",
"agent", "kind", "mean_return", "stderr_return", ...}]}`) as one bar chart per env, with the
human and oracle scores published with Memory Maze as lines.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from torchbeast.core.atomic_file import replaced
from torchbeast.core.cli import run_command
from torchbeast.core.text_table import number, text_table
from torchbeast.errors import ConfigError

BANDS = {"minmax": "min-max over runs", "sem": "± standard error over runs"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclasses.dataclass
class RunCurve:
    """The update rows of one run's logs.csv where episodes ended."""

    xpid: str
    flags: Dict[str, Any]
    steps: np.ndarray  # env steps at the update, increasing
    returns: np.ndarray  # mean return of the episodes that ended in the update
    episodes: np.ndarray  # how many ended in it (the weight of its mean)


def load_run(run_dir: str) -> RunCurve:
    """Reads SAVEDIR/XPID/meta.json and logs.csv; ConfigError naming the file if either is missing or bad."""
    from torchbeast.core.run_outputs import read_log

    xpid = os.path.basename(os.path.normpath(run_dir))
    meta_path, log_path = os.path.join(run_dir, "meta.json"), os.path.join(run_dir, "logs.csv")
    for path in (meta_path, log_path):
        if not os.path.isfile(path):
            raise ConfigError(f"run {xpid}: {path} does not exist (is it a training run's folder?)")
    try:
        with open(meta_path) as f:
            flags = json.load(f)["flags"]
        rows = [r for r in read_log(log_path) if r.get("mean_episode_return")]
        steps = np.array([int(r["step"]) for r in rows], dtype=np.int64)
        returns = np.array([float(r["mean_episode_return"]) for r in rows], dtype=np.float64)
        episodes = np.array([float(r.get("episodes") or 1) for r in rows], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"run {xpid}: cannot read {meta_path} or {log_path}: {e}") from None
    order = np.argsort(steps, kind="stable")
    return RunCurve(xpid, flags, steps[order], returns[order], episodes[order])


def find_runs(savedir: str, xpids: Optional[Sequence[str]]) -> List[str]:
    """SAVEDIR/XPID for each xpid, or every folder of `savedir` that has a logs.csv and a meta.json."""
    if xpids:
        return [os.path.join(savedir, xpid) for xpid in xpids]
    if not os.path.isdir(savedir):
        raise ConfigError(f"--savedir {savedir} does not exist")
    runs = [os.path.join(savedir, name) for name in sorted(os.listdir(savedir))
            if all(os.path.isfile(os.path.join(savedir, name, f)) for f in ("logs.csv", "meta.json"))]
    if not runs:
        raise ConfigError(f"--savedir {savedir}: no runs in it (folders with logs.csv and meta.json)")
    return runs


def group_label(flags: Dict[str, Any], group_by: Sequence[str]) -> str:
    return ", ".join(f"{key}={flags.get(key)}" for key in group_by)


def group_runs(runs: Sequence[RunCurve], group_by: Sequence[str]) -> Dict[str, Dict[str, List[RunCurve]]]:
    """env -> group label -> runs, envs and labels sorted; ConfigError if a run lacks a --group_by flag."""
    groups: Dict[str, Dict[str, List[RunCurve]]] = {}
    for run in runs:
        missing = [key for key in [*group_by, "env"] if key not in run.flags]
        if missing:
            raise ConfigError(f"--group_by: run {run.xpid} has no flag {missing[0]!r} in its meta.json")
        groups.setdefault(str(run.flags["env"]), {}).setdefault(group_label(run.flags, group_by), []).append(run)
    return {env: dict(sorted(by_label.items())) for env, by_label in sorted(groups.items())}


def smoothed(run: RunCurve, grid: np.ndarray, window: float) -> np.ndarray:
    """At each grid step s, the mean return of the episodes that ended in (s - window, s]; NaN if none."""
    weights = np.concatenate([[0.0], np.cumsum(run.episodes)])
    totals = np.concatenate([[0.0], np.cumsum(run.returns * run.episodes)])
    end = np.searchsorted(run.steps, grid, side="right")
    start = np.searchsorted(run.steps, grid - window, side="right")
    count = weights[end] - weights[start]
    out = np.full(grid.shape, np.nan)
    has = count > 0
    out[has] = (totals[end] - totals[start])[has] / count[has]
    return out


def aggregate(values: np.ndarray, band: str = "minmax") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs (axis 0, NaNs ignored) and the band's low and high edges.

    `band` "minmax": the smallest and largest run; "sem": the mean -+ the standard error (sample
    std / sqrt(n)), zero width where fewer than two runs have a value. NaN where no run has one.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {sorted(BANDS)}, got {band!r}")
    values = np.asarray(values, dtype=np.float64)
    has = ~np.isnan(values)
    n = has.sum(axis=0)
    filled = np.where(has, values, 0.0)
    mean = np.full(values.shape[1:], np.nan)
    np.divide(filled.sum(axis=0), n, out=mean, where=n > 0)
    if band == "minmax":
        low = np.where(n > 0, np.where(has, values, np.inf).min(axis=0), np.nan)
        high = np.where(n > 0, np.where(has, values, -np.inf).max(axis=0), np.nan)
        return mean, low, high
    squares = np.where(has, (values - mean) ** 2, 0.0).sum(axis=0)
    sem = np.zeros_like(mean)
    np.divide(np.sqrt(squares / np.maximum(n - 1, 1)), np.sqrt(np.maximum(n, 1)), out=sem, where=n > 1)
    sem[n == 0] = np.nan
    return mean, mean - sem, mean + sem


def group_curve(runs: Sequence[RunCurve], window: Optional[float], points: int = 200,
                band: str = "minmax") -> Optional[Dict[str, Any]]:
    """The group's mean and band on a grid up to its shortest run, from where every run has an
    episode and a whole window has passed (before, a point would average one or two episodes);
    None if a run has no episode yet."""
    if any(len(run.steps) == 0 for run in runs):
        return None
    end = min(int(run.steps[-1]) for run in runs)
    begin = max(int(run.steps[0]) for run in runs)
    window = window or nice_window(end)
    grid = np.linspace(min(max(begin, window), end), end, points)
    mean, low, high = aggregate(np.stack([smoothed(run, grid, window) for run in runs]), band)
    return dict(steps=grid, mean=mean, low=low, high=high, window=window, runs=len(runs))


@dataclasses.dataclass
class FinalReturns:
    """A group's runs compared at one step: the mean return of each run's episodes that ended in
    (step - window, step]."""

    label: str
    step: int
    window: float
    returns: List[float]  # one per run that had an episode in the window

    def row(self) -> Dict[str, Any]:
        values = self.returns
        return dict(group=self.label, runs=len(values), step=self.step, window=int(self.window),
                    mean=float(np.mean(values)) if values else None, min=min(values, default=None),
                    max=max(values, default=None))


def final_returns(groups: Dict[str, List[RunCurve]], window: Optional[float]) -> List[FinalReturns]:
    """Every group of one env at the step where its shortest run ends, so that all groups are
    compared after the same number of env steps."""
    ended = [run for runs in groups.values() for run in runs if len(run.steps)]
    if not ended:
        return []
    step = min(int(run.steps[-1]) for run in ended)
    window = window or nice_window(step)
    table = []
    for label, runs in groups.items():
        values = [smoothed(run, np.array([float(step)]), window)[0] for run in runs if len(run.steps)]
        table.append(FinalReturns(label, step, window, [float(v) for v in values if not np.isnan(v)]))
    return table


def write_final_returns(env: str, table: Sequence[FinalReturns], out_dir: str) -> str:
    """Prints the table and writes it as OUT/final_returns_ENV.csv; returns the CSV's path."""
    rows = [entry.row() for entry in table]
    step, window = rows[0]["step"], rows[0]["window"]
    print(f"{env.split(':', 1)[-1]}: mean return of the episodes that ended in steps ({step - window}, {step}] "
          "(the shortest run's end), over each group's runs")
    print(text_table(["group", "runs", "mean", "min", "max"],
                     [[r["group"], str(r["runs"]), number(r["mean"]), number(r["min"]), number(r["max"])]
                      for r in rows]))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"final_returns_{env_file_name(env)}.csv")
    with replaced(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def nice_window(end: float) -> float:
    """About 1/20 of `end`, rounded down to 1, 2 or 5 times a power of ten (at least 1)."""
    target = max(end / 20, 1.0)
    power = 10 ** math.floor(math.log10(target))
    return float(max(m * power for m in (1, 2, 5) if m * power <= target))


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure without pyplot: no global state, no GUI backend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def _steps_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    def text(x: float, _: Any) -> str:
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= scale:
                return f"{x / scale:.3g}{suffix}"
        return f"{x:.3g}"

    return FuncFormatter(text)


def env_file_name(env: str) -> str:
    return _UNSAFE.sub("-", env.split(":", 1)[-1])


def _save(fig: Any, out_dir: str, stem: str) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{stem}.{ext}") for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=150)
    return paths


def group_colours(labels: Sequence[str]) -> Dict[str, Any]:
    """One colour per group label, the same in every figure of a call."""
    from matplotlib import colormaps

    cycle = colormaps["tab10"].colors
    return {label: cycle[i % len(cycle)] for i, label in enumerate(sorted(set(labels)))}


def plot_curves(env: str, groups: Dict[str, List[RunCurve]], out_dir: str, colours: Dict[str, Any],
                window: Optional[float] = None, band: str = "minmax") -> List[str]:
    """One figure of `env`'s groups; returns the PNG and SVG paths."""
    fig, ax = _figure(8, 4.8)
    drawn_window = None
    for label, runs in groups.items():
        curve = group_curve(runs, window, band=band)
        if curve is None:
            continue
        drawn_window = curve["window"]
        runs_text = f"{curve['runs']} run" + ("s" if curve["runs"] > 1 else "")
        ax.plot(curve["steps"], curve["mean"], color=colours[label], lw=2, label=f"{label} ({runs_text})")
        if curve["runs"] > 1:
            ax.fill_between(curve["steps"], curve["low"], curve["high"], color=colours[label], alpha=0.2, lw=0)
    if drawn_window is None:
        ax.text(0.5, 0.5, "no episode has ended yet in these runs", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(loc="best", fontsize=9, framealpha=0.9)
        smoothing = _steps_formatter()(drawn_window, None)
        ax.set_title(f"mean over runs, band: {BANDS[band]}; each point: episodes ended in the last {smoothing} "
                     "steps", fontsize=9)
    fig.suptitle(env.split(":", 1)[-1], fontsize=12)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.xaxis.set_major_formatter(_steps_formatter())
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir, f"learning_curves_{env_file_name(env)}")


def read_evaluation(path: str) -> Dict[str, List[Dict[str, Any]]]:
    """env -> the result rows of that env, from `python -m torchbeast.evaluate`'s evaluation.json."""
    try:
        with open(path) as f:
            rows = json.load(f)["results"]
        by_env: Dict[str, List[Dict[str, Any]]] = {}
        for row in rows:
            if not isinstance(row["agent"], str) or not isinstance(row["env"], str):
                raise TypeError("agent and env must be strings")
            if row["mean_return"] is None:
                continue  # an agent without episodes has no bar
            float(row["mean_return"])
            by_env.setdefault(row["env"], []).append(row)
    except OSError as e:
        raise ConfigError(f"--evaluation {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--evaluation {path}: not an evaluation.json of torchbeast.evaluate "
                          f"(expected {{\"results\": [{{\"env\", \"agent\", \"mean_return\", ...}}]}}): {e}") from None
    if not by_env:
        raise ConfigError(f"--evaluation {path}: no results in it")
    return by_env


def _bar_name(row: Dict[str, Any]) -> str:
    kind = row.get("kind", "run")
    if kind == "random":
        return "random policy"
    return row["agent"] + ("\n(no memory)" if kind == "no_memory" else "")


def plot_evaluation(env: str, rows: Sequence[Dict[str, Any]], out_dir: str, colours: Dict[str, Any],
                    labels: Dict[str, str]) -> List[str]:
    """Bars of mean return (+- standard error) per agent on `env`, with the published human and
    oracle scores as lines; bars of runs coloured by their group (`labels`: xpid -> group)."""
    from torchbeast.core.scores import published_scores

    fig, ax = _figure(4.0 + 0.8 * max(len(rows), 3), 5.2)  # the legend takes ~3 inches
    x = np.arange(len(rows))
    means = [float(row["mean_return"]) for row in rows]
    errors = [float(row["stderr_return"]) if row.get("stderr_return") is not None else 0.0 for row in rows]
    baseline = [row.get("kind", "run") != "run" for row in rows]
    bar_colours = ["0.7" if is_base else colours.get(labels.get(row.get("xpid") or ""), "tab:blue")
                   for row, is_base in zip(rows, baseline)]
    bars = ax.bar(x, means, yerr=errors, capsize=4, color=bar_colours, edgecolor="0.3", lw=0.6)
    for bar, is_base in zip(bars, baseline):
        if is_base:
            bar.set_hatch("//")
    # The values as text: next to the human and oracle lines, returns near 0 are too short to read.
    ax.bar_label(bars, labels=[f"{m:.2f}\n± {e:.2f}" for m, e in zip(means, errors)], padding=3, fontsize=8)
    scores = published_scores(env)
    if scores is not None:
        ax.axhline(scores.oracle, color="tab:green", ls="--", lw=1.5, label=f"oracle {scores.oracle:g}")
        ax.axhline(scores.human, color="tab:red", ls="--", lw=1.5, label=f"human {scores.human:g}")
    handles, legend_labels = ax.get_legend_handles_labels()
    from matplotlib.patches import Patch

    shown = dict.fromkeys(labels.get(row.get("xpid") or "") for row, b in zip(rows, baseline) if not b)
    for label in shown:
        if label in colours:
            handles.append(Patch(facecolor=colours[label], edgecolor="0.3"))
            legend_labels.append(label)
    if any(baseline):
        handles.append(Patch(facecolor="0.7", edgecolor="0.3", hatch="//"))
        legend_labels.append("baseline")
    if handles:
        ax.legend(handles, legend_labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    names = [_bar_name(row) for row in rows]
    ax.set_xticks(x)
    long_names = max(len(name.split("\n")[0]) for name in names) > 10
    ax.set_xticklabels(names, rotation=40 if long_names else 0, ha="right" if long_names else "center", fontsize=9)
    ax.set_ylabel("mean episode return (± standard error)")
    top = max([m + e for m, e in zip(means, errors)] + ([scores.oracle] if scores else []))
    ax.set_ylim(min(0.0, min(means)), top * 1.08 if top > 0 else 1.0)
    episodes = max(int(row.get("episodes") or 0) for row in rows)
    fig.suptitle(env.split(":", 1)[-1], fontsize=12)
    ax.set_title(f"{episodes} episodes per agent, the same seeds for every agent", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir, f"evaluation_{env_file_name(env)}")


def make_parser() -> argparse.ArgumentParser:
    from torchbeast.core.flags import OneLineErrorParser

    parser = OneLineErrorParser(prog="python -m torchbeast.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--savedir", default="./logs", help="Root folder of the runs. (default: %(default)s)")
    parser.add_argument("--xpids", nargs="+", default=None, metavar="XPID",
                        help="Runs to draw (SAVEDIR/XPID). (default: every run in --savedir)")
    parser.add_argument("--group_by", nargs="+", default=["posemb"], metavar="FLAG",
                        help="Flags (from each run's meta.json) whose values make a group. (default: %(default)s)")
    parser.add_argument("--smooth", type=float, default=None, metavar="STEPS",
                        help="Each point averages the episodes that ended in the last STEPS env steps. "
                             "(default: 1/20 of the steps drawn)")
    parser.add_argument("--band", default="minmax", choices=list(BANDS),
                        help="Band around each group's mean: 'minmax' over its runs, or 'sem', the standard "
                             "error. (default: %(default)s)")
    parser.add_argument("--evaluation", default=None, metavar="FILE",
                        help="evaluation.json of python -m torchbeast.evaluate: also draw it as bar charts.")
    parser.add_argument("--out", default=None, help="Folder for the figures. (default: SAVEDIR/plots)")
    return parser


def make_figures(args: argparse.Namespace) -> List[str]:
    """Draws every figure `args` asks for; returns the paths written."""
    if args.smooth is not None and not (args.smooth > 0 and math.isfinite(args.smooth)):
        raise ConfigError(f"--smooth must be a positive number of env steps, got {args.smooth}")
    savedir = os.path.expanduser(args.savedir)
    out_dir = args.out or os.path.join(savedir, "plots")
    evaluation = read_evaluation(args.evaluation) if args.evaluation else {}
    try:
        run_dirs = find_runs(savedir, args.xpids)
    except ConfigError:
        if args.xpids or not evaluation:
            raise
        run_dirs = []  # only the evaluation to draw
    runs = [load_run(path) for path in run_dirs]
    grouped = group_runs(runs, args.group_by)
    # Evaluated runs take their group from their meta.json when it is there.
    labels = {run.xpid: group_label(run.flags, args.group_by) for run in runs}
    for rows in evaluation.values():
        for row in rows:
            xpid = row.get("xpid")
            meta = os.path.join(savedir, xpid, "meta.json") if xpid else ""
            if xpid and xpid not in labels and os.path.isfile(meta):
                with open(meta) as f:
                    labels[xpid] = group_label(json.load(f).get("flags", {}), args.group_by)
    colours = group_colours(list(labels.values()))
    paths: List[str] = []
    for env, groups in grouped.items():
        paths += plot_curves(env, groups, out_dir, colours, args.smooth, args.band)
        table = final_returns(groups, args.smooth)
        if table:
            paths.append(write_final_returns(env, table, out_dir))
    for env, rows in evaluation.items():
        paths += plot_evaluation(env, rows, out_dir, colours, labels)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = make_parser().parse_args(argv)

    def body() -> None:
        for path in make_figures(args):
            print(path)

    return run_command("plot", body)


if __name__ == "__main__":
    sys.exit(main())
