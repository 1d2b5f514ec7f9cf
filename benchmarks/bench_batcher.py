"""Benchmark of libtorchbeast's DynamicBatcher and BatchingQueue.

DynamicBatcher: N caller threads (C++ threads, like ActorPool's actors, via the private
`libtorchbeast._C._bench_compute`) each call compute() in a loop with actor-like inputs (a
64x64x3 uint8 observation plus scalars, [T=1, B=1] each); one Python thread is the "model": it
takes each batch, and answers with an int64 action per caller (no computation). Metrics:
  calls/s   compute() calls completed per second of wall time, over all callers;
  p50/p99   latency of one compute() call in microseconds: from submitting the inputs to
            having this caller's outputs. With a trivial model this is what the batcher (plus
            the Python model loop) adds to inference.
  mean batch  callers per batch (calls / batches).
BatchingQueue: one Python producer thread enqueues nests and the main thread dequeues them
(maximum_batch_size=8). Metric: nests/s through the queue (enqueue to dequeue), for a small
nest (two [1, 1] arrays) and a rollout-sized one (81x1x64x64x3 uint8, ~1 MB, copied on
enqueue and concatenated on dequeue).

Run from the repository root with libtorchbeast importable (`pip install -e .`, or
PYTHONPATH=<build>/libtorchbeast/python for a cmake build):
    python benchmarks/bench_batcher.py           # ~30 s; writes benchmarks/results/bench_batcher.json
    python benchmarks/bench_batcher.py --quick   # a few seconds, noisier
    python benchmarks/bench_batcher.py --out /tmp/bench_batcher.json
"""

import argparse
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
from report import write_result

import libtorchbeast
from libtorchbeast import _C

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_batcher.json"
CALLERS = (1, 2, 4, 8, 16, 32, 64)


def actor_inputs():
    return {
        "observation": {"frame": np.zeros((1, 1, 64, 64, 3), np.uint8)},
        "reward": np.zeros((1, 1), np.float32),
        "done": np.zeros((1, 1), np.bool_),
        "last_action": np.zeros((1, 1), np.int64),
        "agent_state": (),
    }


def bench_dynamic_batcher(num_callers, calls_per_caller):
    batcher = libtorchbeast.DynamicBatcher(batch_dim=1, minimum_batch_size=1, maximum_batch_size=num_callers,
                                           timeout_ms=None)
    batches = [0]

    def model():
        for batch in batcher:
            batch.set_outputs({"action": np.zeros((1, batch.batch_size), np.int64)})
            batches[0] += 1

    thread = threading.Thread(target=model)
    thread.start()
    start = time.perf_counter()
    latencies = np.array(_C._bench_compute(batcher, num_callers, calls_per_caller, actor_inputs()))
    elapsed = time.perf_counter() - start
    batcher.close()
    thread.join()
    return {
        "callers": num_callers,
        "calls": int(latencies.size),
        "calls_per_s": latencies.size / elapsed,
        "p50_us": float(np.percentile(latencies, 50)),
        "p99_us": float(np.percentile(latencies, 99)),
        "mean_batch": latencies.size / max(batches[0], 1),
    }


def bench_batching_queue(name, nest, count):
    queue = libtorchbeast.BatchingQueue(batch_dim=1, minimum_batch_size=1, maximum_batch_size=8,
                                        maximum_queue_size=64)

    def produce():
        for _ in range(count):
            queue.enqueue(nest)

    producer = threading.Thread(target=produce)
    start = time.perf_counter()
    producer.start()
    received = 0
    while received < count:
        received += queue.dequeue_many()["x"].shape[1]
    elapsed = time.perf_counter() - start
    producer.join()
    queue.close()
    return {"nest": name, "nests": count, "nests_per_s": count / elapsed}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls: a smoke test")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    args = parser.parse_args()
    total_calls = 4000 if args.quick else 40000

    batcher_rows = []
    print(f"{'callers':>7} {'calls/s':>10} {'p50 us':>8} {'p99 us':>8} {'mean batch':>10}")
    for n in CALLERS:
        row = bench_dynamic_batcher(n, max(total_calls // n, 50))
        batcher_rows.append(row)
        print(f"{row['callers']:>7} {row['calls_per_s']:>10.0f} {row['p50_us']:>8.1f} {row['p99_us']:>8.1f}"
              f" {row['mean_batch']:>10.1f}")

    queue_rows = []
    small = {"x": np.zeros((1, 1), np.float32), "y": np.zeros((1, 1), np.int64)}
    rollout = {"x": np.zeros((81, 1, 64, 64, 3), np.uint8)}
    print(f"\n{'nest':>8} {'nests/s':>10}")
    for name, nest, count in [("small", small, 2000 if args.quick else 20000),
                              ("rollout", rollout, 50 if args.quick else 400)]:
        row = bench_batching_queue(name, nest, count)
        queue_rows.append(row)
        print(f"{row['nest']:>8} {row['nests_per_s']:>10.0f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "bench_batcher",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "quick": args.quick,
        "dynamic_batcher": batcher_rows,
        "batching_queue": queue_rows,
    }
    write_result(str(args.out), result)


if __name__ == "__main__":
    main()
