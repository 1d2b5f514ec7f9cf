"""PolyBeast across hosts: steps/s with 1, 2 and 4 env hosts, 1 vs 2 learner ranks (torchrun,
gloo), TLS on vs off, and the seconds from a host registering to its first learned steps.

    python benchmarks/bench_scale.py            # ~8 min; writes benchmarks/results/bench_scale.json
    python benchmarks/bench_scale.py --quick    # ~4 min: shorter runs, the maze with 1 and 2 hosts only

Every run uses registration: the learner serves it (--registry_bind), each env host runs
`polybeast_env --num_servers --servers_per_host --learner LEARNER` and joins when it is up.
With root, the learner and each env host are network namespaces on one bridge (tests/netns.py),
talking TCP; without it, all of them are processes on loopback (and the table says so).

Metrics (a "step" is one env step of one actor, learned by the learner):
- total steps/s: the learner's progress lines, over --duration_s after --warmup_s past its first
  update (with 2 ranks: rank 0's lines, which count both ranks' steps);
- per host: the mean of the hosts' rates in rank 0's progress lines over the same window
  (per-host env steps delivered to rank 0; with 2 ranks, or on loopback where every host is
  127.0.0.1, total / hosts instead);
- first join: seconds from the first host's "registered" line to the learner's first progress
  line past step 0 (connect, first unroll, first batch, first update);
- mid-run join (the 'join' run): a second host starts after the warmup; seconds from its
  "registered" line to the first progress line that counts its server.
All hosts share this machine's cores (2 on the reference machine): more hosts add no cores, so
totals measure overheads, not scaling. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import commands  # noqa: E402  (tests/: process helpers with timed output lines)
from commands import Command  # noqa: E402
from netns import netns_unavailable_reason, network_hosts  # noqa: E402
from report import write_result  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CUE, MAZE = "torchbeast:CueMemory-v0", "memory_maze:MemoryMaze-9x9-ExtraObs-v0"
PROGRESS = re.compile(r"^step +(\d+) .*\| (\d+) env servers?(?: \| (.*) SPS)?$")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration_s", type=float, default=40.0, help="measured training time of each run")
    parser.add_argument("--warmup_s", type=float, default=5.0, help="not counted, after the first update")
    parser.add_argument("--servers_per_host", type=int, default=1)
    parser.add_argument("--train_flags", default="--encoder small --hidden_size 64 --batch_size 4 --unroll_length 20 "
                        "--num_learner_threads 1 --num_inference_threads 1",
                        help="extra learner flags, one string")
    parser.add_argument("--quick", action="store_true", help="15 s runs; the maze with 1 and 2 hosts only")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_scale.json"))
    args = parser.parse_args()
    if args.quick:
        args.duration_s, args.warmup_s = 15.0, 3.0
    return args


class Topology:
    """Where the learner and the env hosts run: network namespaces (root) or loopback."""

    def __init__(self, folder: str, hosts=None) -> None:
        self.folder, self.hosts = folder, hosts
        self.registry_port = 4400 if hosts else free_port()
        self.learner_host = hosts["learner"].address if hosts else "127.0.0.1"
        names = {"learner": self.learner_host, **{f"env{i}": self.env_address(i) for i in range(4)}}
        self.certs = os.path.join(folder, "certs")
        subprocess.run(["bash", os.path.join(REPO, "scripts", "make_certs.sh"), self.certs,
                        *(f"{name}={address}" for name, address in names.items())], check=True, capture_output=True)

    def env_address(self, i: int) -> str:
        return self.hosts[f"env{i}"].address if self.hosts else "127.0.0.1"

    def security(self, name: str, tls: bool) -> List[str]:
        if tls:
            return ["--tls_cert", f"{self.certs}/{name}.crt", "--tls_key", f"{self.certs}/{name}.key",
                    "--tls_ca", f"{self.certs}/ca.crt"]
        return ["--insecure"] if self.hosts else []

    def prefix(self, name: str) -> List[str]:
        return self.hosts[name].command([])[:4] if self.hosts else []

    def learner(self, env: str, ranks: int, tls: bool, xpid: str, args: argparse.Namespace) -> Command:
        bind = f"{'0.0.0.0' if self.hosts else '127.0.0.1'}:{self.registry_port}"
        flags = ["--env", env, "--registry_bind", bind, "--total_steps", 10**9, "--log_interval", 1,
                 "--savedir", self.folder, "--xpid", xpid, "--num_threads", 1, *self.security("learner", tls),
                 *args.train_flags.split()]
        if ranks == 1:
            return Command.module("torchbeast.polybeast_learner", *flags, prefix=self.prefix("learner"))
        commands.ENV["GLOO_SOCKET_IFNAME"] = "lo"  # one node: the ranks meet on loopback
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(ranks),
                    "--master_port", str(free_port()), "-m", "torchbeast.polybeast_learner"]
        return Command([*self.prefix("learner"), *torchrun, *flags], name="torchrun learners")

    def env_host(self, env: str, i: int, tls: bool, args: argparse.Namespace) -> Command:
        port = 4431 if self.hosts else 24431 + 10 * i + (os.getpid() % 100) * 50
        bind = f"{'0.0.0.0' if self.hosts else '127.0.0.1'}:{port}"
        return Command.module("torchbeast.polybeast_env", "--env", env, "--num_servers", args.servers_per_host,
                              "--bind", bind, "--learner", f"{self.learner_host}:{self.registry_port}",
                              *self.security(f"env{i}", tls), prefix=self.prefix(f"env{i}"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def progress(learner: Command, start: float, end: float) -> List[tuple]:
    """(time, step, servers, {host: rate}) of the learner's progress lines between start and end."""
    rows = []
    for t, line in list(learner.lines):
        match = PROGRESS.match(line)
        if match and start <= t <= end:
            rates = {}
            for pair in (match.group(3) or "").split(", "):
                if pair:
                    host, rate = pair.rsplit(" ", 1)
                    rates[host] = float(rate)
            rows.append((t, int(match.group(1)), int(match.group(2)), rates))
    return rows


def run(name: str, env: str, hosts: int, ranks: int, tls: bool, join: bool, topology: Topology,
        args: argparse.Namespace) -> Dict:
    """One training run; its measurements."""
    learner = topology.learner(env, ranks, tls, name.replace(" ", "-"), args)
    servers: List[Command] = []
    try:
        learner.wait_for(r"Serving env server registration", timeout=120)
        servers = [topology.env_host(env, i, tls, args) for i in range(hosts)]
        registered, _ = servers[0].wait_for(r"\[libtorchbeast.Registrar\] registered", timeout=180)
        first_step, _ = learner.wait_for(r"^step +[1-9]", timeout=300, since=registered)
        result = dict(env=env, hosts=hosts, ranks=ranks, tls=tls, first_join_s=first_step - registered)
        start = first_step + args.warmup_s
        if join:  # a second host joins mid-run
            time.sleep(max(0.0, start - time.monotonic()))
            servers.append(topology.env_host(env, hosts, tls, args))
            joined, _ = servers[-1].wait_for(r"\[libtorchbeast.Registrar\] registered", timeout=180)
            wanted = (hosts + 1) * args.servers_per_host if ranks == 1 else None
            counted, _ = learner.wait_for(rf"^step +\d+ .*\| {wanted} env servers", timeout=120, since=joined)
            result.update(mid_run_join_s=counted - joined)
            return result
        end = start + args.duration_s
        time.sleep(max(0.0, end - time.monotonic()) + 1.5)
        rows = progress(learner, start, end)
        (t0, s0, _, _), (t1, s1, _, _) = rows[0], rows[-1]
        total = (s1 - s0) / (t1 - t0)
        host_rates: Dict[str, List[float]] = {}
        for _, _, _, rates in rows[1:]:
            for host, rate in rates.items():
                host_rates.setdefault(host, []).append(rate)
        distinct = topology.hosts is not None and ranks == 1
        per_host = (sum(sum(r) / len(r) for r in host_rates.values()) / max(1, len(host_rates)) if distinct
                    else total / hosts)
        result.update(sps=total, per_host_sps=per_host, per_host_measured=distinct,
                      host_sps={host: sum(r) / len(r) for host, r in host_rates.items()})
        return result
    finally:
        learner.send(15, group=False)
        try:
            learner.wait(timeout=60)
        except AssertionError:
            pass
        learner.kill()
        for server in servers:
            server.stop(timeout=30)
            server.kill()


def main() -> None:
    args = parse_args()
    no_netns = netns_unavailable_reason()
    plan = [  # name, env, hosts, ranks, tls, join
        ("cue 1 host", CUE, 1, 1, False, False),
        ("cue 2 hosts", CUE, 2, 1, False, False),
        ("cue 4 hosts", CUE, 4, 1, False, False),
        ("cue 2 hosts 2 ranks", CUE, 2, 2, False, False),
        ("cue 2 hosts TLS", CUE, 2, 1, True, False),
        ("cue join", CUE, 1, 1, False, True),
        ("maze 1 host", MAZE, 1, 1, False, False),
        ("maze 2 hosts", MAZE, 2, 1, False, False),
    ]
    if not args.quick:
        plan += [("maze 4 hosts", MAZE, 4, 1, False, False), ("maze 2 hosts 2 ranks", MAZE, 2, 2, False, False),
                 ("maze 2 hosts TLS", MAZE, 2, 1, True, False)]
    results: Dict[str, Dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder, contextlib.ExitStack() as stack:
        hosts = None if no_netns else stack.enter_context(
            network_hosts(["learner", "env0", "env1", "env2", "env3", "env4"]))
        topology = Topology(folder, hosts)
        for name, env, n, ranks, tls, join in plan:
            print(f"running {name} ...", flush=True)
            results[name] = run(name, env, n, ranks, tls, join, topology, args)
    transport = "TCP between network namespaces" if not no_netns else f"loopback (no namespaces: {no_netns})"
    print(f"\n{args.servers_per_host} env server(s) per host, {transport}; {args.duration_s:.0f} s measured per run; "
          f"{platform.machine()}, {os.cpu_count()} cores shared by the learner and all the hosts")

    def cell(value: Optional[float], width: int, digits: int = 1) -> str:
        return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    print(f"{'run':<22} {'hosts':>5} {'ranks':>5} {'TLS':>4} {'steps/s':>8} {'per host':>9} {'first join s':>12} "
          f"{'mid-run join s':>15}")
    for name, r in results.items():
        print(f"{name:<22} {r['hosts']:>5} {r['ranks']:>5} {'on' if r['tls'] else 'off':>4} {cell(r.get('sps'), 8)} "
              f"{cell(r.get('per_host_sps'), 8)}{' ' if r.get('per_host_measured', True) else '*'} "
              f"{cell(r['first_join_s'], 12, 2)} {cell(r.get('mid_run_join_s'), 15, 2)}")
    print("* total / hosts (the hosts' rates are not told apart: loopback, or a second rank's servers)")
    result = dict(vars(args), runs=results, transport="tcp-netns" if not no_netns else "loopback")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
