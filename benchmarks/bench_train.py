"""PolyBeast against MonoBeast: training SPS with the same number of actors, in the same run,
beside the raw throughput of that many env processes.

    python benchmarks/bench_train.py                              # 2 actors, this CPU
    python benchmarks/bench_train.py --num_actors 16 --steps 200000 --out gpu.json   # a GPU machine

Metrics (a "step" is one env step of one actor):
- raw env steps/s: `--num_actors` processes stepping Memory Maze with random actions at once;
- training SPS: env steps learned per second, from each run's logs.csv after the first
  `--warmup` fraction of the steps (start-up is not counted); MonoBeast with `--num_actors`
  actor processes, PolyBeast with `--num_actors` gRPC env servers (one actor each) and dynamic
  inference batching in the learner;
- ratios: each training SPS over the raw env throughput, and PolyBeast over MonoBeast.
Goals: PolyBeast >= MonoBeast at 2 actors on a 2-core CPU, >= 3x at 16 actors on a GPU machine;
training SPS >= 0.8 x raw. Prints a table, writes JSON (default benchmarks/results/bench_train.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

from bench_monobeast import raw_env_throughput, training_sps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="memory_maze:MemoryMaze-9x9-ExtraObs-v0")
    parser.add_argument("--num_actors", type=int, default=2)
    parser.add_argument("--env_steps", type=int, default=300, help="raw steps per process")
    parser.add_argument("--steps", type=int, default=12000, help="training steps per run")
    parser.add_argument("--warmup", type=float, default=0.25)
    parser.add_argument("--train_flags", default="--batch_size 8 --unroll_length 80",
                        help="extra flags for both trainers, one string")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_train.json"))
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl" if os.path.exists("/dev/nvidia0") else "osmesa")

    raw = raw_env_throughput(args.env, args.num_actors, args.env_steps)
    extra = args.train_flags.split()
    mono = training_sps(args.env, args.num_actors, args.steps, args.warmup, extra, module="torchbeast.monobeast")
    poly = training_sps(args.env, args.num_actors, args.steps, args.warmup, extra, module="torchbeast.polybeast")
    print(f"\n{args.env}, {args.num_actors} actors, flags: {args.train_flags}  "
          f"({platform.machine()}, {os.cpu_count()} cores)")
    print(f"{'measurement':<28} {'steps/s':>10} {'ratio to raw':>13}")
    print(f"{'raw env':<28} {raw:>10.1f}")
    for name, result in (("MonoBeast training", mono), ("PolyBeast training", poly)):
        print(f"{name:<28} {result['sps']:>10.1f} {result['sps'] / raw:>13.2f}")
    print(f"PolyBeast / MonoBeast: {poly['sps'] / mono['sps']:.2f}")
    result = dict(env=args.env, num_actors=args.num_actors, train_flags=args.train_flags, raw_steps_per_s=raw,
                  monobeast_sps=mono["sps"], polybeast_sps=poly["sps"], polybeast_over_monobeast=poly["sps"] / mono["sps"],
                  monobeast_ratio_to_raw=mono["sps"] / raw, polybeast_ratio_to_raw=poly["sps"] / raw,
                  cpu_count=os.cpu_count(), machine=platform.machine(), time=time.strftime("%Y-%m-%d %H:%M:%S"))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
