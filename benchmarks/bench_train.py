"""PolyBeast against MonoBeast: training SPS with the same number of actors, in the same run,
beside the raw throughput of that many env processes.

    python benchmarks/bench_train.py                              # 2 actors, this CPU
    python benchmarks/bench_train.py --num_actors 16 --steps 200000 --out gpu.json   # a GPU machine

Metrics (a "step" is one env step of one actor):
- raw env steps/s: `--num_actors` processes stepping Memory Maze with random actions at once,
  within an episode (`--env_steps` each, no reset) and over whole episodes (`--raw_episodes`
  each, resets included, as in training; see bench_monobeast.py);
- training SPS: env steps learned per second, from each run's logs.csv after the first
  `--warmup` fraction of the steps (start-up is not counted); MonoBeast with `--num_actors`
  actor processes, PolyBeast with `--num_actors` gRPC env servers (one actor each) and dynamic
  inference batching in the learner;
- ratios: each training SPS over both raw rates, and PolyBeast over MonoBeast.
Goals: PolyBeast >= MonoBeast at 2 actors on a 2-core CPU, >= 3x at 16 actors on a GPU machine;
training SPS >= 0.8 x raw. Prints a table, writes JSON (default benchmarks/results/bench_train.json).
"""
from __future__ import annotations

import os
import platform

from bench_monobeast import raw_env_throughput, training_parser, training_sps
from report import write_result

from torchbeast.envs.rendering import configure_rendering


def main() -> None:
    parser = training_parser(__doc__.split("\n\n")[0], "bench_train.json", env_steps=300, steps=12000,
                             train_flags_help="extra flags for both trainers, one string")
    args = parser.parse_args()
    if "," in args.env_impl:
        parser.error("--env_impl: bench_train.py takes one impl per run (bench_monobeast.py takes a list)")
    configure_rendering()  # the trainers' subprocesses inherit MUJOCO_GL

    impl = args.env_impl
    raw = raw_env_throughput(args.env, args.num_actors, steps=args.env_steps, impl=impl)
    raw_episodes = raw_env_throughput(args.env, args.num_actors, episodes=args.raw_episodes, impl=impl)
    extra = args.train_flags.split()
    mono = training_sps(args.env, args.num_actors, args.steps, args.warmup, extra, module="torchbeast.monobeast",
                        impl=impl)
    poly = training_sps(args.env, args.num_actors, args.steps, args.warmup, extra, module="torchbeast.polybeast",
                        impl=impl)
    print(f"\n{args.env}, {args.num_actors} actors, flags: {args.train_flags}  "
          f"({platform.machine()}, {os.cpu_count()} cores)")
    print(f"{'measurement':<30} {'steps/s':>10} {'/in episode':>12} {'/whole eps':>11}")
    print(f"{'raw env, in an episode':<30} {raw:>10.1f}")
    print(f"{'raw env, whole episodes':<30} {raw_episodes:>10.1f}")
    for name, result in (("MonoBeast training", mono), ("PolyBeast training", poly)):
        print(f"{name:<30} {result['sps']:>10.1f} {result['sps'] / raw:>12.2f} {result['sps'] / raw_episodes:>11.2f}")
    print(f"PolyBeast / MonoBeast: {poly['sps'] / mono['sps']:.2f}")
    result = dict(env=args.env, env_impl=impl, num_actors=args.num_actors, train_flags=args.train_flags,
                  raw_steps_per_s=raw,
                  raw_steps_per_s_whole_episodes=raw_episodes,
                  monobeast_sps=mono["sps"], polybeast_sps=poly["sps"],
                  polybeast_over_monobeast=poly["sps"] / mono["sps"],
                  monobeast_ratio_to_raw=mono["sps"] / raw, polybeast_ratio_to_raw=poly["sps"] / raw,
                  monobeast_ratio_to_whole_episodes=mono["sps"] / raw_episodes,
                  polybeast_ratio_to_whole_episodes=poly["sps"] / raw_episodes)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
