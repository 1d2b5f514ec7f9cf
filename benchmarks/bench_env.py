"""Raw Memory Maze env speed: impl="upstream" against impl="fast", 1 process and 1 per core.

Run from the repository root (OSMesa unless MUJOCO_GL is set; see torchbeast.envs.rendering):

    python benchmarks/bench_env.py                      # 300 timed steps per measurement
    python benchmarks/bench_env.py --steps 1000 --out /tmp/bench_env.json
    python benchmarks/bench_env.py --env memory_maze:MemoryMaze-9x9-v0 --procs 4

Metrics (every measurement runs in fresh processes started with the spawn context):
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
import json
import multiprocessing
import os
import platform
import sys
import time
from importlib import metadata
from typing import Dict, List, Optional

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

DEFAULT_ENVS = ("memory_maze:MemoryMaze-9x9-v0", "memory_maze:MemoryMaze-15x15-ExtraObs-v0")
IMPLS = ("upstream", "fast")


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
    lines = [f"{'env':42} {'procs':>5} {'upstream':>10} {'fast':>10} {'fast/upstream':>14}"]
    keys = sorted({(r["env_id"], r["procs"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for env_id, procs in keys:
        by_impl = {r["impl"]: r["steps_per_s"] for r in rows
                   if r["env_id"] == env_id and r["procs"] == procs}
        up, fast = by_impl.get("upstream"), by_impl.get("fast")
        ratio = f"{fast / up:.2f}x" if up and fast else "-"
        fmt = lambda v: f"{v:10.1f}" if v is not None else f"{'-':>10}"  # noqa: E731
        lines.append(f"{env_id:42} {procs:5d} {fmt(up)} {fmt(fast)} {ratio:>14}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps after the reset")
    parser.add_argument("--env", action="append", dest="envs",
                        help=f"env id (repeatable; default {', '.join(DEFAULT_ENVS)})")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1,
                        help="process count of the multi-process row (default: one per core)")
    parser.add_argument("--out", default=os.path.join(_REPO_ROOT, "benchmarks", "results",
                                                     "bench_env.json"), help="JSON output path")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.procs < 1:
        parser.error("--steps and --procs must be >= 1, --warmup >= 0")

    from torchbeast.envs import configure_rendering, env_spec

    envs = [env_spec(env_id).env_id for env_id in (args.envs or DEFAULT_ENVS)]
    backend = configure_rendering()  # Inherited by the spawned workers through os.environ.
    rows = []
    for env_id in envs:
        for procs in sorted({1, args.procs}):
            for impl in IMPLS:
                row = measure(env_id, impl, procs, args.steps, args.warmup)
                print(f"{env_id} procs={procs} {impl}: {row['steps_per_s']:.1f} steps/s",
                      flush=True)
                rows.append(row)
    print()
    print(_table(rows))

    report = {
        "benchmark": "bench_env",
        "metric": "env steps/s (one step = one env.step(): 50 physics substeps + one render)",
        "mujoco_gl": backend,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "versions": _versions(),
        "steps": args.steps,
        "warmup": args.warmup,
        "results": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
