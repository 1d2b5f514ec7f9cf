"""PolyBeast environment servers: Memory Maze over gRPC, one process per server.

Each server process runs a `libtorchbeast.Server`; every actor stream that connects gets its own
env instance from the factory. Serve locally over unix sockets:

    python -m torchbeast.polybeast_env --num_servers 4 --pipes_basename unix:/tmp/polybeast \\
        --env memory_maze:MemoryMaze-9x9-ExtraObs-v0

or to other hosts over TCP (server i listens on PORT + i):

    python -m torchbeast.polybeast_env --num_servers 16 --bind 0.0.0.0:4431 --env ...
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, List, Optional

from torchbeast.core import flags as flags_lib
from torchbeast.core.cli import children_ignore_sigint, run_command, setup_logging
from torchbeast.core.environment import create_env
from torchbeast.core.supervisor import HealthCheck, Outcome, StopReason, exited_processes, interrupt_detail
from torchbeast.errors import ConfigError

log = logging.getLogger("torchbeast")


def server_addresses(pipes_basename: Optional[str], bind: Optional[str], num_servers: int) -> List[str]:
    """`unix:BASE.i` for i < num_servers, or `HOST:PORT+i` with --bind HOST:PORT."""
    if bind:
        host, sep, port = bind.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) + num_servers - 1 < 65536:
            raise ConfigError(f"--bind {bind}: expected HOST:PORT with PORT + --num_servers - 1 below 65536")
        return [f"{host}:{int(port) + i}" for i in range(num_servers)]
    if not pipes_basename or not pipes_basename.startswith("unix:") or len(pipes_basename) <= len("unix:"):
        raise ConfigError(f"--pipes_basename {pipes_basename!r}: expected unix:/path/prefix")
    folder = os.path.dirname(pipes_basename[len("unix:"):]) or "."
    if not os.path.isdir(folder):
        raise ConfigError(f"--pipes_basename {pipes_basename}: folder {folder} does not exist")
    return unix_addresses(pipes_basename, num_servers)


def unix_addresses(pipes_basename: str, num_servers: int) -> List[str]:
    """The socket of server i for `--pipes_basename unix:/path/prefix`: unix:/path/prefix.i."""
    return [f"{pipes_basename}.{i}" for i in range(num_servers)]


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What a server's env factory needs from the flags (sent to each server process)."""

    env: str
    seed: Optional[int]
    pos_noise: float
    impl: str

    @classmethod
    def from_flags(cls, flags: argparse.Namespace) -> "EnvSpec":
        return cls(env=flags.env, seed=flags.seed, pos_noise=flags.pos_noise, impl=flags.env_impl)


def env_factory(spec: EnvSpec, server_index: int) -> Callable[[], Any]:
    """One env per stream; seeds differ per server and per stream but repeat with --seed."""
    counter = itertools.count()

    def make() -> Any:
        seed = None
        if spec.seed is not None:
            seed = spec.seed * 1_000_000 + server_index * 1000 + next(counter)
        return create_env(spec.env, seed=seed, pos_noise=spec.pos_noise, impl=spec.impl)

    return make


def serve(spec: EnvSpec, server_index: int, address: str) -> None:
    """Process body: serve one address until SIGTERM."""
    from libtorchbeast import Server

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.getLogger("absl").setLevel(logging.ERROR)  # dm_control's per-reset "Cannot set velocity"
    logging.getLogger("OpenGL").setLevel(logging.WARNING)
    if address.startswith("unix:") and os.path.exists(address[len("unix:"):]):
        os.unlink(address[len("unix:"):])  # a stale socket from a killed run
    server = Server(env_factory(spec, server_index), address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    stop.wait()
    server.stop()
    if address.startswith("unix:") and os.path.exists(address[len("unix:"):]):
        os.unlink(address[len("unix:"):])


def start_servers(spec: EnvSpec, addresses: List[str]) -> List[Any]:
    """Starts one server process per address (spawned: no inherited torch or GL state)."""
    ctx = mp.get_context("spawn")
    processes = []
    with children_ignore_sigint():  # they stop on SIGTERM from stop_servers()
        for i, address in enumerate(addresses):
            process = ctx.Process(target=serve, args=(spec, i, address), name=f"env-server-{i}", daemon=True)
            process.start()
            processes.append(process)
    return processes


def stop_servers(processes: List[Any], timeout: float = 10.0) -> None:
    """SIGTERM to all, then SIGKILL to any still alive when `timeout` seconds have passed in all."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            log.warning("%s did not stop within %.0f s of SIGTERM; killing it.", process.name, timeout)
            process.kill()
            process.join()


def servers_running(processes: List[Any], addresses: List[str]) -> HealthCheck:
    """A health check failing when a server process exits, e.g. 'env server env-server-2
    (unix:/tmp/x/env.2) exited with code -9 (SIGKILL)'. Servers exit only when stop_servers()
    stops them (they ignore SIGINT)."""
    return exited_processes([(f"env server {p.name} ({a})", p) for p, a in zip(processes, addresses)])


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("servers")
    group.add_argument("--num_servers", type=int, default=4, help="Env server processes. (default: %(default)s)")
    group.add_argument("--pipes_basename", default="unix:/tmp/polybeast",
                       help="Serve on unix sockets BASENAME.0 ... BASENAME.N-1. (default: %(default)s)")
    group.add_argument("--bind", default=None,
                       help="Serve over TCP instead, server i on HOST:PORT+i, e.g. 0.0.0.0:4431.")


def server_problems(flags: argparse.Namespace) -> List[str]:
    if flags.num_servers <= 0:
        return [f"--num_servers must be positive, got {flags.num_servers}"]
    try:
        server_addresses(flags.pipes_basename, flags.bind, flags.num_servers)
    except ConfigError as e:
        return [str(e)]
    return []


SERVERS = flags_lib.FlagGroup(add_server_flags, server_problems)


def make_parser() -> flags_lib.FlagParser:
    return flags_lib.FlagParser("python -m torchbeast.polybeast_env", __doc__.split("\n\n")[0],
                                (flags_lib.ENV, SERVERS))


def serve_until_stopped(flags: argparse.Namespace) -> StopReason:
    """Runs the servers until one exits (failed) or Ctrl-C / SIGTERM (interrupted), then stops all."""
    addresses = server_addresses(flags.pipes_basename, flags.bind, flags.num_servers)
    processes = start_servers(EnvSpec.from_flags(flags), addresses)
    running = servers_running(processes, addresses)
    log.info("Serving %s on %s", flags.env, ", ".join(addresses))
    try:
        reason = None
        while reason is None:
            processes[0].join(timeout=0.5)
            reason = running()
    except KeyboardInterrupt as interrupt:
        reason = StopReason.interrupted(interrupt_detail(interrupt))
    finally:
        stop_servers(processes)
    log.log(logging.ERROR if reason.outcome is Outcome.FAILED else logging.INFO, "Stopped (%s).", reason)
    return reason


def main(argv: Optional[List[str]] = None) -> int:
    setup_logging()
    parser = make_parser()
    return run_command("polybeast_env", lambda: serve_until_stopped(parser.parse_flags(argv)))


if __name__ == "__main__":
    sys.exit(main())
