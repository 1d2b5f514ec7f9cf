"""Benchmark of env steps through libtorchbeast's gRPC env server.

A null env (reset/step return the same preallocated 64x64x3 uint8 observation, reward 0, never
done) runs behind a libtorchbeast.Server in a separate process (spawned), so client and server
do not share a GIL. One "step" is one action sent and one observation received over a stream,
including the server's Python env.step() call and the conversions on both sides.
  one stream   a Python loop over libtorchbeast.Client.step() (one stream), over a unix socket
               and over TCP on 127.0.0.1: steps/s and the mean round trip in microseconds.
  N streams    an ActorPool with N actors (C++ threads) on one server process, a
               DynamicBatcher (maximum_batch_size=N, timeout 1 ms) answered by a Python thread
               with a constant action, and a BatchingQueue of rollouts (unroll 20) drained by
               the main thread: env steps/s over all streams (ActorPool.count()), unix socket.
  --maze ENV   (optional) one real env, stepped with the same random actions first in this
               process and then through a `torchbeast.polybeast_env` server over one unix-socket
               stream: steps/s of both, and the CPU per step of this process against the
               server's. The difference is what the gRPC path costs a PolyBeast env server.
Run from the repository root with libtorchbeast importable (`pip install -e .`, or
PYTHONPATH=<build>/libtorchbeast/python for a cmake build):
    python benchmarks/bench_rpc.py            # ~40 s; writes benchmarks/results/bench_rpc.json
    python benchmarks/bench_rpc.py --quick    # ~10 s, noisier
    python benchmarks/bench_rpc.py --out /tmp/bench_rpc.json
    python benchmarks/bench_rpc.py --maze memory_maze:MemoryMaze-9x9-ExtraObs-v0   # +~40 s
"""

import argparse
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from report import write_result

import libtorchbeast

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_rpc.json"
STREAMS = (1, 2, 4, 8, 16)


class NullEnv:
    def __init__(self):
        self.obs = {"frame": np.zeros((64, 64, 3), np.uint8)}

    def reset(self):
        return self.obs, {}

    def step(self, action):
        return self.obs, 0.0, False, False, {}


def serve(address, ready):
    server = libtorchbeast.Server(NullEnv, address)
    server.start()
    ready.set()
    server.wait()


def start_server(address):
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=serve, args=(address, ready), daemon=True)
    process.start()
    if not ready.wait(60):
        raise RuntimeError("the env server did not start")
    return process


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connected_client(address, timeout):
    """A Client connected to `address`, retrying while the server starts; raises after `timeout` s."""
    client = libtorchbeast.Client(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.connect()
            return client
        except libtorchbeast.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def bench_one_stream(address, seconds):
    client = connected_client(address, timeout=2.5)
    action = np.array(0, np.int64)
    for _ in range(1000):  # Warm up.
        client.step(action)
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(1000):
            client.step(action)
        steps += 1000
    client.close()
    return {"steps": steps, "steps_per_s": steps / elapsed, "round_trip_us": 1e6 * elapsed / steps}


def bench_pool(address, streams, seconds):
    queue = libtorchbeast.BatchingQueue(batch_dim=1, maximum_batch_size=streams, maximum_queue_size=64)
    batcher = libtorchbeast.DynamicBatcher(batch_dim=1, maximum_batch_size=streams, timeout_ms=1)

    def model():
        for batch in batcher:
            batch.set_outputs({"action": np.zeros((1, batch.batch_size), np.int64)})

    def learner():
        for _ in queue:
            pass

    threads = [threading.Thread(target=model), threading.Thread(target=learner)]
    pool = libtorchbeast.ActorPool(unroll_length=20, learner_queue=queue, inference_batcher=batcher,
                                   env_server_addresses=[address] * streams)
    runner = threading.Thread(target=pool.run)
    for t in threads + [runner]:
        t.start()
    time.sleep(min(1.0, seconds / 2))  # Warm up: connect, first rollouts.
    count, start = pool.count(), time.perf_counter()
    time.sleep(seconds)
    steps, elapsed = pool.count() - count, time.perf_counter() - start
    queue.close()
    batcher.close()
    for t in threads + [runner]:
        t.join()
    return {"streams": streams, "steps": steps, "steps_per_s": steps / elapsed}


def _cpu_seconds(pid):
    """User + system CPU seconds of a process and its direct children (all their threads)."""
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    total = 0.0
    for process in [pid, *map(int, children)]:
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def bench_maze_stream(env_id, steps, folder):
    """One real env in this process, then behind a polybeast_env server: steps/s and CPU ms/step."""
    from torchbeast.core.environment import create_env

    actions = np.random.default_rng(0).integers(0, 6, 50 + steps)

    def timed_steps(step, server_cpu=lambda: 0.0):
        """Warm-up steps, then (wall, this process's CPU, the server's CPU) seconds of the timed ones."""
        for action in actions[:50]:  # Warm up, and keep the timed steps within one episode.
            step(action)
        start, cpu, server = time.perf_counter(), time.process_time(), server_cpu()
        for action in actions[50:]:
            step(action)
        return time.perf_counter() - start, time.process_time() - cpu, server_cpu() - server

    env = create_env(env_id, seed=1)
    env.reset()
    elapsed, cpu, _ = timed_steps(lambda action: env.step(int(action)))
    env.close()
    rows = [{"path": "in process", "steps_per_s": steps / elapsed, "env_cpu_ms_per_step": 1e3 * cpu / steps}]

    server = subprocess.Popen([sys.executable, "-m", "torchbeast.polybeast_env", "--num_servers", "1",
                               "--pipes_basename", f"unix:{folder}/maze", "--env", env_id, "--seed", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = connected_client(f"unix:{folder}/maze.0", timeout=120)
        elapsed, cpu, server_cpu = timed_steps(lambda action: client.step(np.array(action, np.int64)),
                                               lambda: _cpu_seconds(server.pid))
        client.close()
    finally:
        server.terminate()
        server.wait()
    rows.append({"path": "gRPC stream", "steps_per_s": steps / elapsed, "env_cpu_ms_per_step": 1e3 * server_cpu / steps,
                 "client_cpu_ms_per_step": 1e3 * cpu / steps})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs: a smoke test")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    parser.add_argument("--maze", metavar="ENV_ID", help="also time one real env in process and through a server")
    parser.add_argument("--maze_steps", type=int, default=800,
                        help="steps timed each way with --maze, within one episode (default: %(default)s)")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 4.0

    with tempfile.TemporaryDirectory() as tmp:
        addresses = {"unix": f"unix:{tmp}/null_env", "tcp": f"127.0.0.1:{free_port()}"}
        servers = {name: start_server(address) for name, address in addresses.items()}
        try:
            one_stream = []
            print(f"{'transport':>9} {'steps/s':>10} {'round trip us':>14}")
            for name, address in addresses.items():
                row = {"transport": name, **bench_one_stream(address, seconds)}
                one_stream.append(row)
                print(f"{name:>9} {row['steps_per_s']:>10.0f} {row['round_trip_us']:>14.1f}")

            pool_rows = []
            print(f"\n{'streams':>7} {'steps/s':>10}   (ActorPool + DynamicBatcher, unix socket)")
            for streams in STREAMS:
                row = bench_pool(addresses["unix"], streams, seconds)
                pool_rows.append(row)
                print(f"{streams:>7} {row['steps_per_s']:>10.0f}")
        finally:
            for process in servers.values():
                process.terminate()
                process.join()

        maze_rows = []
        if args.maze:
            print(f"\n{args.maze}, one env:")
            print(f"{'path':>12} {'steps/s':>9} {'env CPU ms/step':>16} {'client CPU ms/step':>19}")
            maze_rows = bench_maze_stream(args.maze, args.maze_steps, tmp)
            for row in maze_rows:
                client = f"{row['client_cpu_ms_per_step']:.2f}" if "client_cpu_ms_per_step" in row else "-"
                print(f"{row['path']:>12} {row['steps_per_s']:>9.1f} {row['env_cpu_ms_per_step']:>16.2f} {client:>19}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "bench_rpc",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "quick": args.quick,
        "observation": "uint8 [64, 64, 3]",
        "one_stream": one_stream,
        "actor_pool": pool_rows,
        "maze": {"env": args.maze, "steps": args.maze_steps, "rows": maze_rows} if args.maze else None,
    }
    write_result(str(args.out), result)


if __name__ == "__main__":
    main()
