"""MonoBeast training throughput against the raw throughput of the same env processes.

    python benchmarks/bench_monobeast.py                      # 9x9-ExtraObs, 2 actors, CPU
    python benchmarks/bench_monobeast.py --num_actors 16 --steps 200000 --out gpu.json
    python benchmarks/bench_monobeast.py --env_impl fast_v1,fast --steps 12000   # before/after, one run

Metrics (one "step" is one env step of one actor, i.e. one 64x64 frame the agent acts on):
- raw env steps/s: random actions through our `Environment` wrapper (auto-reset, tensors), in
  1 process and in `--num_actors` processes that start stepping together (all their steps over
  the time from the first start to the last finish). "In an episode": `--env_steps` steps from
  an episode's start, no reset among them. "Whole episodes": `--raw_episodes` whole episodes per
  process, resets included, which is what a trainer pays over time (a Memory Maze reset builds
  and compiles a new maze: ~0.9 s in one process here, against ~3 ms per step);
- training SPS: env steps learned per second by MonoBeast (`--posemb noisygt`, LSTM, the flags
  below), measured from its logs.csv after the first `--warmup` fraction of the steps, so process
  start-up and env construction are not counted;
- ratio: training SPS / raw steps/s of the same number of processes, against both raw rates.
  The goal is >= 0.8: the learner and the actor-side inference should cost the actors little.
Prints a table and writes JSON (default benchmarks/results/bench_monobeast.json).
"""
from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from report import write_result

from torchbeast.envs.rendering import configure_rendering


def _step_env(env_id: str, steps: int, episodes: int, seed: int, barrier: object, impl: str) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from torchbeast.core.environment import Environment, create_env

    raw = create_env(env_id, seed=seed, impl=impl)
    steps = steps or episodes * raw.max_episode_steps  # whole episodes: each ends in an auto-reset
    env = Environment(raw)
    env.initial()
    rng = np.random.default_rng(seed)
    env.step(0)  # first step compiles/warms caches
    barrier.wait()  # all processes step together: a process running alone would be faster
    start = time.monotonic()
    for _ in range(steps):
        env.step(int(rng.integers(6)))
    end = time.monotonic()
    env.close()
    return dict(start=start, end=end, steps=steps)


def raw_env_throughput(env_id: str, processes: int, steps: int = 0, episodes: int = 0, impl: str = "fast") -> float:
    """Total env steps/s of `processes` processes stepping at once with random actions.

    Each process takes `steps` steps from an episode's start (no reset among them: the rate
    within an episode), or `episodes` whole episodes (their resets included: the rate a trainer
    can get over time; a Memory Maze reset rebuilds the maze and costs ~0.9 s here). The
    processes build their envs, meet at a barrier, then step; the rate is all their steps over
    the time from the first start to the last finish (the machine's throughput).
    """
    if bool(steps) == bool(episodes):
        raise ValueError("give steps or episodes")
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(processes)
        with ctx.Pool(processes) as pool:
            runs = pool.starmap(_step_env, [(env_id, steps, episodes, seed, barrier, impl)
                                            for seed in range(processes)])
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    return sum(r["steps"] for r in runs) / wall


def training_sps(env_id: str, num_actors: int, steps: int, warmup: float, extra: list,
                 module: str = "torchbeast.monobeast", impl: str = "fast") -> dict:
    """Steady-state training SPS of MonoBeast (or `module`: torchbeast.polybeast) from its logs.csv."""
    actors_flag = "--num_servers" if module == "torchbeast.polybeast" else "--num_actors"
    with tempfile.TemporaryDirectory() as savedir:
        cmd = [sys.executable, "-m", module, "--env", env_id, "--posemb", "noisygt",
               actors_flag, str(num_actors), "--total_steps", str(steps), "--savedir", savedir,
               "--xpid", "bench", "--log_interval", "10", "--env_impl", impl, *extra]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        with open(os.path.join(savedir, "bench", "logs.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
    after = [r for r in rows if int(r["step"]) >= warmup * steps]
    first, last = after[0], after[-1]
    sps = (int(last["step"]) - int(first["step"])) / (float(last["time"]) - float(first["time"]))
    return dict(sps=sps, wall_s=wall, steps=int(rows[-1]["step"]))


def training_parser(
    description: str, out_name: str, env_steps: int, steps: int, train_flags_help: str
) -> argparse.ArgumentParser:
    """The flags that bench_monobeast.py and bench_train.py share; defaults differ per script."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--env", default="memory_maze:MemoryMaze-9x9-ExtraObs-v0")
    parser.add_argument("--num_actors", type=int, default=2)
    parser.add_argument("--env_steps", type=int, default=env_steps, help="raw steps per process within an episode")
    parser.add_argument("--raw_episodes", type=int, default=1,
                        help="whole episodes per process for the raw rate with resets")
    parser.add_argument("--steps", type=int, default=steps, help="training steps per run")
    parser.add_argument("--warmup", type=float, default=0.25)
    parser.add_argument("--train_flags", default="--batch_size 8 --unroll_length 80", help=train_flags_help)
    parser.add_argument("--env_impl", default="fast",
                        help="the env's --env_impl (fast, fast_v1, upstream); bench_monobeast.py takes a "
                             "comma-separated list and measures each in turn, in the same run")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", out_name))
    return parser


def main() -> None:
    parser = training_parser(__doc__.split("\n\n")[0], "bench_monobeast.json", env_steps=500, steps=20000,
                             train_flags_help="extra MonoBeast flags, one string")
    args = parser.parse_args()
    configure_rendering()  # the trainers' subprocesses inherit MUJOCO_GL

    results = []
    for impl in args.env_impl.split(","):
        raw_1 = raw_env_throughput(args.env, 1, steps=args.env_steps, impl=impl)
        raw_n = raw_env_throughput(args.env, args.num_actors, steps=args.env_steps, impl=impl)
        raw_episodes = raw_env_throughput(args.env, args.num_actors, episodes=args.raw_episodes, impl=impl)
        train = training_sps(args.env, args.num_actors, args.steps, args.warmup, args.train_flags.split(), impl=impl)
        rows = [
            ("raw env, 1 process, in an episode", raw_1, None, None),
            (f"raw env, {args.num_actors} procs, in an episode", raw_n, None, None),
            (f"raw env, {args.num_actors} procs, whole episodes", raw_episodes, None, None),
            (f"MonoBeast training, {args.num_actors} actors", train["sps"], train["sps"] / raw_n,
             train["sps"] / raw_episodes),
        ]
        print(f"\n{args.env}, --env_impl {impl}  ({platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores)")
        print(f"{'measurement':<38} {'steps/s':>10} {'/in episode':>12} {'/whole eps':>11}")
        for name, value, ratio, ratio_episodes in rows:
            ratios = "" if ratio is None else f" {ratio:>12.2f} {ratio_episodes:>11.2f}"
            print(f"{name:<38} {value:>10.1f}{ratios}", flush=True)
        results.append(dict(env_impl=impl, raw_steps_per_s_1=raw_1, raw_steps_per_s_n=raw_n,
                            raw_steps_per_s_whole_episodes=raw_episodes, training_sps=train["sps"],
                            training_wall_s=train["wall_s"], ratio=train["sps"] / raw_n,
                            ratio_to_whole_episodes=train["sps"] / raw_episodes))
    result = dict(env=args.env, num_actors=args.num_actors, train_flags=args.train_flags, results=results)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
