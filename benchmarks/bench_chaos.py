"""PolyBeast training under faults: steps/s of a fault-free run beside the same run with one env
server in three SIGKILLed (and restarted at once) every --fault_every seconds, and with one env
host cut off the network (a partition) for --partition_s every --fault_every seconds.

    python benchmarks/bench_chaos.py            # ~4 min; writes benchmarks/results/bench_chaos.json
    python benchmarks/bench_chaos.py --quick    # ~2 min, one fault per faulty run

Metrics (a "step" is one env step of one actor):
- steps/s: env steps learned per second, from the learner's progress lines, from --warmup_s after
  its first update to the end of the run (--duration_s of training; faults included);
- ratio: a faulty run's steps/s over the fault-free run's;
- reconnect (kills): seconds from the restarted server accepting connections to the learner's
  "actor 1: reconnected" line; rejoin (partition): seconds from the link coming back up to it;
- checkpoint save: the seconds each save took ("Saved checkpoint ... in X s"), every
  --checkpoint_interval seconds.
With root (network namespaces, tests/netns.py), the learner and the three env servers are four
hosts on a bridge, talking TCP; without it all run on unix sockets and the partition is skipped.
Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from commands import Command  # noqa: E402  (tests/: the chaos tests' process helpers)
from netns import netns_unavailable_reason, network_hosts  # noqa: E402
from report import write_result  # noqa: E402

SAVE_RE = re.compile(r"Saved checkpoint .* in ([0-9.]+) s$")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="torchbeast:CueMemory-v0")
    parser.add_argument("--duration_s", type=float, default=60.0, help="training time of each run")
    parser.add_argument("--warmup_s", type=float, default=3.0, help="not counted, after the first update")
    parser.add_argument("--fault_every", type=float, default=20.0, help="seconds between faults")
    parser.add_argument("--partition_s", type=float, default=10.0, help="how long a partition lasts")
    parser.add_argument("--checkpoint_interval", type=float, default=5.0)
    parser.add_argument("--env_timeout_s", type=float, default=3.0)
    parser.add_argument("--train_flags", default="--encoder small --hidden_size 64 --batch_size 8 --unroll_length 20",
                        help="extra learner flags, one string")
    parser.add_argument("--quick", action="store_true", help="30 s runs, a fault at 12 s, 5 s partition")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_chaos.json"))
    args = parser.parse_args()
    if args.quick:
        args.duration_s, args.warmup_s, args.fault_every, args.partition_s = 30.0, 2.0, 12.0, 5.0
    return args


class Topology:
    """Where the learner and the three servers run: network namespaces (TCP) or unix sockets."""

    def __init__(self, folder: str, hosts=None) -> None:
        self.hosts = hosts
        names = ["env0", "env1", "env2"]
        if hosts is None:
            self.addresses = [f"unix:{folder}/env{i}.0" for i in range(3)]
        else:
            self.addresses = [f"{hosts[name].address}:4431" for name in names]
        self.prefixes = [hosts[name].command([]) if hosts else [] for name in names]
        self.learner_prefix = hosts["learner"].command([]) if hosts else []
        self.insecure = ["--insecure"] if hosts else []  # plaintext across (namespace) hosts

    def start_server(self, env: str, i: int) -> Command:
        address = self.addresses[i]
        where = ["--bind", address] if not address.startswith("unix:") else ["--pipes_basename", address[:-2]]
        server = Command.module("torchbeast.polybeast_env", "--env", env, "--num_servers", 1, *where,
                                *self.insecure, prefix=self.prefixes[i])
        server.wait_for(r"Serving ", timeout=120)
        return server

    def accepts(self, i: int, timeout: float = 120.0) -> float:
        """Waits until server i accepts connections; the time it first did."""
        address = self.addresses[i]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if address.startswith("unix:"):
                probe = socket.socket(socket.AF_UNIX)
                target = address[len("unix:"):]
            else:
                host, port = address.rsplit(":", 1)
                probe, target = socket.socket(), (host, int(port))
            with probe:
                probe.settimeout(0.5)
                try:
                    probe.connect(target)
                    return time.monotonic()
                except OSError:
                    time.sleep(0.02)
        raise RuntimeError(f"nothing accepts on {address} after {timeout} s")


def run_scenario(name: str, args: argparse.Namespace, topology: Topology, savedir: str) -> Dict:
    """One training run of --duration_s with the faults of `name`; its measurements."""
    servers = [topology.start_server(args.env, i) for i in range(3)]
    learner = Command.module(
        "torchbeast.polybeast_learner", "--env", args.env, "--env_servers", *topology.addresses, *topology.insecure,
        "--env_timeout_s", args.env_timeout_s, "--checkpoint_interval", args.checkpoint_interval,
        "--log_interval", 1, "--total_steps", 10**9, "--savedir", savedir, "--xpid", name,
        *args.train_flags.split(), prefix=topology.learner_prefix)
    recoveries: List[float] = []
    try:
        started, _ = learner.wait_for(r"^step +[1-9]", timeout=300)
        start = started + args.warmup_s
        end = start + args.duration_s
        next_fault = start + args.fault_every
        while time.monotonic() < end:
            time.sleep(max(0.0, min(end, next_fault) - time.monotonic()))
            if time.monotonic() >= end or name == "fault-free":
                continue
            if name == "server killed":
                servers[1].kill()  # SIGKILL to the server command and its server process
                servers[1] = topology.start_server(args.env, 1)
                back = topology.accepts(1)
            else:
                topology.hosts.disconnect("env1")
                time.sleep(args.partition_s)
                topology.hosts.reconnect("env1")
                back = time.monotonic()
            pattern = rf"actor 1: reconnected to {re.escape(topology.addresses[1])}$"
            rejoined, _ = learner.wait_for(pattern, timeout=120, since=back)
            recoveries.append(rejoined - back)
            next_fault = max(next_fault + args.fault_every, time.monotonic())
        learner.stop(timeout=60)
    finally:
        learner.kill()
        for server in servers:
            server.stop(timeout=30)
            server.kill()
    steps = [(t, step) for t, step in learner.steps() if start <= t <= end]
    (t0, s0), (t1, s1) = steps[0], steps[-1]
    saves = [float(m.group(1)) for m in map(SAVE_RE.search, (line for _, line in learner.lines)) if m]
    return dict(sps=(s1 - s0) / (t1 - t0), faults=len(recoveries), recovery_s=recoveries, save_s=saves)


def quantiles(values: List[float]) -> Dict[str, Optional[float]]:
    return dict(p50=statistics.median(values) if values else None, max=max(values) if values else None)


def main() -> None:
    args = parse_args()
    no_netns = netns_unavailable_reason()
    scenarios = ["fault-free", "server killed"] + (["partition"] if no_netns is None else [])
    results: Dict[str, Dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as folder, contextlib.ExitStack() as stack:
        hosts = None if no_netns else stack.enter_context(network_hosts(["learner", "env0", "env1", "env2"]))
        topology = Topology(folder, hosts)
        for name in scenarios:
            print(f"running {name} ...", flush=True)
            results[name] = run_scenario(name, args, topology, folder)
    base = results["fault-free"]["sps"]
    print(f"\n{args.env}, 3 env servers ({'TCP between network namespaces' if not no_netns else 'unix sockets'}), "
          f"{args.duration_s:.0f} s runs, a fault every {args.fault_every:.0f} s"
          f"{f', partitions of {args.partition_s:.0f} s' if not no_netns else ''}; "
          f"{platform.machine()}, {os.cpu_count()} cores")
    print(f"{'run':<15} {'steps/s':>8} {'ratio':>6} {'faults':>6} {'recover p50':>12} {'max':>6} "
          f"{'save p50':>9} {'max':>6}")

    def cell(value: Optional[float], width: int) -> str:
        return f"{value:>{width}.2f}" if value is not None else f"{'-':>{width}}"

    for name, r in results.items():
        r["ratio"] = r["sps"] / base
        r["recovery"], r["save"] = quantiles(r["recovery_s"]), quantiles(r["save_s"])
        print(f"{name:<15} {r['sps']:>8.1f} {r['ratio']:>6.2f} {r['faults']:>6} {cell(r['recovery']['p50'], 12)} "
              f"{cell(r['recovery']['max'], 6)} {cell(r['save']['p50'], 9)} {cell(r['save']['max'], 6)}")
    if no_netns:
        print(f"(partition skipped: {no_netns})")
    result = dict(vars(args), scenarios=results, transport="unix" if no_netns else "tcp-netns")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
