"""Raw Memory Maze env speed: impl="upstream", "fast_v1" and "fast", within and over whole episodes.

Run from the repository root (OSMesa unless MUJOCO_GL is set; see torchbeast.envs.rendering):

    python benchmarks/bench_env.py                      # 300 timed steps per measurement
    python benchmarks/bench_env.py --steps 1000 --out /tmp/bench_env.json
    python benchmarks/bench_env.py --env memory_maze:MemoryMaze-9x9-v0 --procs 4
    python benchmarks/bench_env.py --only episodes --env memory_maze:MemoryMaze-9x9-ExtraObs-v0
    python benchmarks/bench_env.py --only episodes --impls fast_v1,fast --rounds 3

Whole episodes (`--only episodes`, one process per impl and round, the same seeded random actions):
- `--rounds` R: each round runs every impl once, one after the other (round r: seed r for the
  mazes and actions of every impl); the rows add up the rounds, and `x fast_v1 per round` lists each
  round's ratio: on a shared machine the load drifts within minutes, and interleaving gives each
  impl the same share of it.
- after an untimed build and first reset (which compiles the textures in and uploads them: once
  per env), `--episodes` whole episodes are stepped, each followed by its reset, as training pays
  them. `step CPU ms` and `reset CPU s` are the process's CPU time (all its threads, so dm_control's
  render thread too) per step and per reset; `episode steps/s` = steps / CPU seconds of the steps
  and the resets: what one core delivers over whole episodes. `x fast_v1`, `x upstream`: its ratio.
- upstream is slow (a 15x15 episode is 4000 steps): it steps at most `--upstream_steps` steps and
  then resets `--episodes` times; its episode rate is then L / (L * step + reset) for the episode
  length L (marked `est.`), exact when the step cost does not drift within an episode.

Within an episode (`--only in_episode`; every measurement in fresh processes, spawn context):
- one *step* is one `MemoryMazeEnv.step()` call: one agent action, 0.25 s of simulated time
  (50 physics substeps) and one 64x64 frame rendered; actions are uniform random, seeded.
  Building the env, the first reset and `--warmup` steps are not timed; `--steps` is far below
  the shortest episode (1000 steps), so no reset is timed either.
- `steps/s` with 1 process: timed steps / wall-clock seconds of that process.
- `steps/s` with N processes: the N processes build and warm up, meet at a barrier, then each
  times its steps; total steps / (last finish - first start), i.e. the machine's throughput.
- `fast/upstream`: the ratio of the two impls' steps/s for the same env and process count.
Results go to a table on stdout and to JSON (`--out`, default benchmarks/results/bench_env.json)
with the machine's CPU count, platform and the versions of the env packages.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import time
from importlib import metadata
from typing import Any, Dict, List, Optional

from report import write_result

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

DEFAULT_ENVS = ("memory_maze:MemoryMaze-9x9-ExtraObs-v0", "memory_maze:MemoryMaze-15x15-ExtraObs-v0")
IMPLS = ("upstream", "fast_v1", "fast")


def _episodes_worker(env_id: str, impl: str, episodes: int, max_steps: Optional[int], seed: int) -> Dict[str, float]:
    """Build one env, reset it (untimed), then step whole episodes, timing steps and resets apart."""
    import numpy as np

    from torchbeast.envs import make_env

    rng = np.random.default_rng(seed)
    step_cpu = reset_cpu = 0.0
    steps = resets = 0
    wall_start = time.monotonic()
    with make_env(env_id, seed=seed, impl=impl) as env:
        env.reset()
        wall_start = time.monotonic()
        for _ in range(episodes):
            ended = False
            start = time.process_time()
            while not ended and (max_steps is None or steps < max_steps):
                _, _, terminated, truncated, _ = env.step(rng.integers(0, 6))
                ended = terminated or truncated
                steps += 1
            step_cpu += time.process_time() - start
            start = time.process_time()
            env.reset()
            reset_cpu += time.process_time() - start
            resets += 1
        wall = time.monotonic() - wall_start
        episode_length = env.max_episode_steps
    return {"env_id": env_id, "impl": impl, "steps": steps, "resets": resets, "step_cpu_s": step_cpu,
            "reset_cpu_s": reset_cpu, "wall_s": wall, "episode_length": episode_length,
            "whole_episodes": max_steps is None}


def measure_episodes(env_id: str, impls: List[str], episodes: int, upstream_steps: Optional[int],
                     rounds: int) -> List[Dict[str, Any]]:
    """CPU per step and per reset, and steps/s over whole episodes, of each impl's env.

    Each round runs every impl once, one after the other, each in a fresh process; the rows add up
    the rounds. On a machine shared with other work the load drifts by tens of percent within
    minutes: interleaving the impls round by round gives each the same share of it, and the spread
    of the per-round ratios shows what is left of the noise.
    """
    context = multiprocessing.get_context("spawn")
    parts: Dict[str, List[Dict[str, Any]]] = {impl: [] for impl in impls}
    for round_index in range(rounds):
        for impl in impls:
            max_steps = upstream_steps if impl == "upstream" else None
            with context.Pool(1) as pool:
                parts[impl].append(pool.apply(_episodes_worker, (env_id, impl, episodes, max_steps, round_index)))
    rows = []
    for impl in impls:
        row = dict(parts[impl][0])
        for key in ("steps", "resets", "step_cpu_s", "reset_cpu_s", "wall_s"):
            row[key] = sum(part[key] for part in parts[impl])
        row["rounds"] = [{key: part[key] for key in ("steps", "resets", "step_cpu_s", "reset_cpu_s")}
                         for part in parts[impl]]
        rows.append(_with_rates(row))
        for part in row["rounds"]:
            _with_rates(dict(part, episode_length=row["episode_length"], whole_episodes=row["whole_episodes"]),
                        into=part)
    return rows


def _with_rates(row: Dict[str, Any], into: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Adds step_cpu_ms, reset_cpu_s_each and episode_steps_per_cpu_s (to `into`, default `row`)."""
    into = row if into is None else into
    step_ms = 1e3 * row["step_cpu_s"] / row["steps"]
    reset_s = row["reset_cpu_s"] / row["resets"]
    if row["whole_episodes"]:
        rate = row["steps"] / (row["step_cpu_s"] + row["reset_cpu_s"])
    else:
        length = row["episode_length"]
        rate = length / (length * step_ms / 1e3 + reset_s)
    into.update(step_cpu_ms=step_ms, reset_cpu_s_each=reset_s, episode_steps_per_cpu_s=rate)
    return into


def _episodes_table(rows: List[Dict[str, Any]]) -> str:
    lines = [f"{'env':42} {'impl':>8} {'steps':>6} {'step CPU ms':>11} {'reset CPU s':>11} "
             f"{'episode steps/s':>16} {'x fast_v1':>9} {'x upstream':>10} {'x fast_v1 per round':>22}"]
    for env_id in sorted({r["env_id"] for r in rows}):
        by_impl = {r["impl"]: r for r in rows if r["env_id"] == env_id}
        for impl in IMPLS:
            r = by_impl.get(impl)
            if r is None:
                continue
            rate = r["episode_steps_per_cpu_s"]
            ratio = {base: (f"{rate / by_impl[base]['episode_steps_per_cpu_s']:.2f}x" if base in by_impl else "-")
                     for base in ("fast_v1", "upstream")}
            per_round = "-"
            if "fast_v1" in by_impl:
                per_round = " ".join(
                    f"{mine['episode_steps_per_cpu_s'] / base['episode_steps_per_cpu_s']:.2f}"
                    for mine, base in zip(r["rounds"], by_impl["fast_v1"]["rounds"]))
            rate_text = f"{rate:.1f}" + ("" if r["whole_episodes"] else " est.")
            lines.append(f"{env_id:42} {impl:>8} {r['steps']:6d} {r['step_cpu_ms']:11.2f} "
                         f"{r['reset_cpu_s_each']:11.3f} {rate_text:>16} {ratio['fast_v1']:>9} "
                         f"{ratio['upstream']:>10} {per_round:>22}")
    return "\n".join(lines)


def _worker(env_id: str, impl: str, steps: int, warmup: int, seed: int,
            barrier: Optional[object]) -> Dict[str, float]:
    """Build one env, warm up, (meet the others,) time `steps` random steps."""
    import numpy as np

    from torchbeast.envs import make_env

    actions = np.random.default_rng(seed).integers(0, 6, size=warmup + steps)
    with make_env(env_id, seed=seed, impl=impl) as env:
        env.reset()
        for action in actions[:warmup]:
            env.step(action)
        if barrier is not None:
            barrier.wait()
        start = time.monotonic()
        for action in actions[warmup:]:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        end = time.monotonic()
    return {"start": start, "end": end, "steps": steps}


def measure(env_id: str, impl: str, procs: int, steps: int, warmup: int) -> Dict[str, float]:
    """Steps/s of `procs` concurrent processes, each stepping its own env."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(procs) if procs > 1 else None
    with context.Pool(procs) as pool:
        results = pool.starmap(
            _worker, [(env_id, impl, steps, warmup, seed, barrier) for seed in range(procs)])
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    total = sum(r["steps"] for r in results)
    return {"env_id": env_id, "impl": impl, "procs": procs, "steps_per_proc": steps,
            "wall_s": wall, "steps_per_s": total / wall}


def _versions() -> Dict[str, str]:
    out = {}
    for package in ("memory-maze", "dm-control", "mujoco", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _table(rows: List[Dict[str, float]]) -> str:
    lines = [f"{'env':42} {'procs':>5} {'upstream':>10} {'fast_v1':>10} {'fast':>10} {'fast/upstream':>14}"]
    keys = sorted({(r["env_id"], r["procs"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for env_id, procs in keys:
        by_impl = {r["impl"]: r["steps_per_s"] for r in rows
                   if r["env_id"] == env_id and r["procs"] == procs}
        up, v1, fast = by_impl.get("upstream"), by_impl.get("fast_v1"), by_impl.get("fast")
        ratio = f"{fast / up:.2f}x" if up and fast else "-"
        fmt = lambda v: f"{v:10.1f}" if v is not None else f"{'-':>10}"  # noqa: E731
        lines.append(f"{env_id:42} {procs:5d} {fmt(up)} {fmt(v1)} {fmt(fast)} {ratio:>14}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps after the reset")
    parser.add_argument("--env", action="append", dest="envs",
                        help=f"env id (repeatable; default {', '.join(DEFAULT_ENVS)})")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1,
                        help="process count of the multi-process row (default: one per core)")
    parser.add_argument("--episodes", type=int, default=1, help="whole episodes per impl and round (episodes part)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="episodes part: rounds, each running every impl once, interleaved (see measure_episodes)")
    parser.add_argument("--upstream_steps", type=int, default=300,
                        help="upstream steps at most in the episodes part (0: whole episodes)")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated impls to measure")
    parser.add_argument("--only", choices=["episodes", "in_episode"], default=None,
                        help="run one part only (default: both)")
    parser.add_argument("--out", default=os.path.join(_REPO_ROOT, "benchmarks", "results",
                                                     "bench_env.json"), help="JSON output path")
    args = parser.parse_args(argv)
    impls = [impl for impl in args.impls.split(",") if impl]
    if args.steps < 1 or args.warmup < 0 or args.procs < 1 or args.episodes < 1 or args.rounds < 1 or \
            args.upstream_steps < 0:
        parser.error("--steps, --procs, --episodes and --rounds must be >= 1, --warmup and --upstream_steps >= 0")
    if any(impl not in IMPLS for impl in impls):
        parser.error(f"--impls: each must be one of {', '.join(IMPLS)}, got {args.impls!r}")

    from torchbeast.envs import configure_rendering, env_spec

    envs = [env_spec(env_id).env_id for env_id in (args.envs or DEFAULT_ENVS)]
    backend = configure_rendering()  # Inherited by the spawned workers through os.environ.
    episode_rows = []
    if args.only in (None, "episodes"):
        for env_id in envs:
            for row in measure_episodes(env_id, impls, args.episodes, args.upstream_steps or None, args.rounds):
                print(f"{env_id} {row['impl']}: {row['step_cpu_ms']:.2f} ms CPU/step, {row['reset_cpu_s_each']:.3f} s "
                      f"CPU/reset, {row['episode_steps_per_cpu_s']:.1f} steps per CPU s over whole episodes",
                      flush=True)
                episode_rows.append(row)
        print()
        print(_episodes_table(episode_rows))
    rows = []
    if args.only in (None, "in_episode"):
        for env_id in envs:
            for procs in sorted({1, args.procs}):
                for impl in impls:
                    row = measure(env_id, impl, procs, args.steps, args.warmup)
                    print(f"{env_id} procs={procs} {impl}: {row['steps_per_s']:.1f} steps/s",
                          flush=True)
                    rows.append(row)
        print()
        print(_table(rows))

    report = {
        "benchmark": "bench_env",
        "metric": "env steps/s (one step = one env.step(): 50 physics substeps + one render); "
                  "episodes: CPU per step and per reset, steps per CPU second over whole episodes",
        "mujoco_gl": backend,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "versions": _versions(),
        "steps": args.steps,
        "warmup": args.warmup,
        "episodes": args.episodes,
        "rounds": args.rounds,
        "upstream_steps": args.upstream_steps,
        "episode_results": episode_rows,
        "results": rows,
    }
    write_result(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
