"""PolyBeast environment servers: Memory Maze over gRPC, one process per server.

Each server process runs a `libtorchbeast.Server`; every actor stream that connects gets its own
env instance from the factory. Serve locally over unix sockets:

    python -m torchbeast.polybeast_env --num_servers 4 --pipes_basename unix:/tmp/polybeast \\
        --env memory_maze:MemoryMaze-9x9-ExtraObs-v0

or to other hosts over TCP (server i listens on PORT + i), registering with the learner, which
then connects to them without being told their addresses (--learner; see --advertise), over
mutual TLS (see torchbeast/core/transport.py):

    python -m torchbeast.polybeast_env --num_servers 16 --bind 0.0.0.0:4431 --env ... \
        --learner LEARNER_HOST:4400 --tls_cert host.crt --tls_key host.key --tls_ca ca.crt
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import itertools
import logging
import multiprocessing as mp
import os
import signal
import socket
import stat
import threading
import time
from typing import Any, Callable, List, Optional

from torchbeast.core import flags as flags_lib
from torchbeast.core.child_processes import die_with_parent
from torchbeast.core.cli import children_ignore_sigint, exit_now, quiet_env_logging, run_command, setup_logging
from torchbeast.core.environment import create_env
from torchbeast.core.supervisor import HealthCheck, Outcome, StopReason, exited_processes, interrupt_detail
from torchbeast.core.transport import (
    TlsPem,
    add_tls_flags,
    address_problem,
    host_towards,
    is_wildcard,
    join_host_port,
    load_tls,
    plaintext_problem,
    split_host_port,
    tls_problems,
    warn_if_insecure,
)
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
    max_streams: int = 1  # streams (envs) each server process serves at a time

    @classmethod
    def from_flags(cls, flags: argparse.Namespace) -> "EnvSpec":
        return cls(env=flags.env, seed=flags.seed, pos_noise=flags.pos_noise, impl=flags.env_impl,
                   max_streams=getattr(flags, "max_streams", 1))


def env_factory(spec: EnvSpec, server_index: int) -> Callable[[], Any]:
    """One env per stream; seeds differ per server and per stream but repeat with --seed."""
    counter = itertools.count()

    def make() -> Any:
        seed = None
        if spec.seed is not None:
            seed = spec.seed * 1_000_000 + server_index * 1000 + next(counter)
        return create_env(spec.env, seed=seed, pos_noise=spec.pos_noise, impl=spec.impl)

    return make


@dataclasses.dataclass(frozen=True)
class Transport:
    """How a server process serves and registers (sent to each server process)."""

    tls: Optional[TlsPem] = None  # mutual TLS over TCP; None: plaintext
    learner: Optional[str] = None  # the learner's registry address (--learner)
    advertised: Optional[str] = None  # this server's address as the learner reaches it


def serve(spec: EnvSpec, server_index: int, address: str, socket_folder: Optional[str] = None,
          transport: Transport = Transport()) -> None:
    """Process body: serve one address until SIGTERM, which also comes when the process that
    started this one dies (even by SIGKILL). On the way out the unix socket is removed, and
    `socket_folder` too once empty (the last server out removes polybeast's temporary folder)."""
    die_with_parent(signal.SIGTERM)
    from libtorchbeast import Server

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    quiet_env_logging()
    claim_address(address)
    tls = transport.tls.config() if transport.tls else None
    server = Server(env_factory(spec, server_index), address, max_streams=spec.max_streams, tls=tls)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    registrar = None
    if transport.learner:  # heartbeats until stopped; stop() tells the learner this server leaves
        from libtorchbeast import Registrar

        registrar = Registrar(transport.learner, [transport.advertised or address], tls=tls)
        registrar.start()
    stop.wait()
    if registrar is not None:
        registrar.stop()
    server.stop()
    if address.startswith("unix:") and os.path.exists(address[len("unix:"):]):
        os.unlink(address[len("unix:"):])
    if socket_folder is not None:
        with contextlib.suppress(OSError):  # not empty yet (another server's socket), or already gone
            os.rmdir(socket_folder)
    logging.shutdown()
    os._exit(0)  # skips the interpreter's teardown (seconds with torch and MuJoCo loaded): stops fast


def claim_address(address: str) -> None:
    """Raises ConfigError unless `address` is free to serve on: a unix path where nothing is, or a
    stale socket (nobody accepts on it; it is removed); a TCP port nobody listens on."""
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ConfigError(f"{address}: {path} exists and is not a socket; not replacing it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # stale: its server is gone
            except OSError as e:
                raise ConfigError(f"{address}: cannot tell whether a server is listening there ({e.strerror}); "
                                  "not replacing it") from None
            else:
                raise ConfigError(f"{address}: another server is listening on this socket")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, ValueError) as e:
        raise ConfigError(f"{address}: cannot resolve {host!r} ({e})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle; a listener is
        try:
            probe.bind(sockaddr)
        except OSError as e:
            reason = "already served (address in use)" if e.errno == errno.EADDRINUSE else e.strerror
            raise ConfigError(f"{address}: {reason}") from None


def start_servers(spec: EnvSpec, addresses: List[str], socket_folder: Optional[str] = None,
                  transports: Optional[List[Transport]] = None) -> List[Any]:
    """Starts one server process per address (spawned: no inherited torch or GL state); they end
    with this process. `socket_folder`: a folder of the sockets to remove when the servers end."""
    ctx = mp.get_context("spawn")
    processes = []
    with children_ignore_sigint():  # they stop on SIGTERM from stop_servers()
        for i, address in enumerate(addresses):
            transport = transports[i] if transports else Transport()
            process = ctx.Process(target=serve, args=(spec, i, address, socket_folder, transport),
                                  name=f"env-server-{i}", daemon=True)
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
    group.add_argument("--max_streams", type=int, default=1,
                       help="Actor streams each server process serves at a time (each has its own env, ~1 GB for "
                            "Memory Maze); a further one is refused with RESOURCE_EXHAUSTED. (default: %(default)s)")
    group.add_argument("--learner", default=None, metavar="HOST:PORT",
                       help="Register the servers with the learner's registry there (polybeast_learner "
                            "--registry_bind), repeating it as a heartbeat: the learner connects to them at once, "
                            "also mid-run, and finds them again after a restart.")
    group.add_argument("--advertise", default=None, metavar="HOST",
                       help="With --learner: the host (IP or name) the learner reaches these servers at. (default: "
                            "the --bind host; for a wildcard --bind such as 0.0.0.0, this host's address on the route "
                            "to the learner)")


def server_problems(flags: argparse.Namespace) -> List[str]:
    if flags.max_streams <= 0:
        return [f"--max_streams must be positive, got {flags.max_streams}"]
    if flags.num_servers <= 0:
        return [f"--num_servers must be positive, got {flags.num_servers}"]
    try:
        server_addresses(flags.pipes_basename, flags.bind, flags.num_servers)
    except ConfigError as e:
        return [str(e)]
    problems = [plaintext_problem("--bind", flags.bind, flags)] if flags.bind else []
    if flags.learner is not None:
        problems.append(address_problem(flags.learner, "--learner") or plaintext_problem("--learner", flags.learner,
                                                                                          flags))
    if flags.advertise is not None:
        if flags.learner is None or flags.bind is None:
            problems.append("--advertise needs --learner and --bind (unix sockets are reached by their path)")
        elif address_problem(join_host_port(flags.advertise, 1), "--advertise") or is_wildcard(flags.advertise):
            problems.append(f"--advertise {flags.advertise!r}: expected a host name or IP address")
    return [problem for problem in problems if problem]


def advertised_addresses(flags: argparse.Namespace, addresses: List[str]) -> List[str]:
    """The addresses the servers register as: unix sockets as they are; TCP ones on the
    --advertise host, else the --bind host, or for a wildcard --bind this host's address on the
    route to --learner."""
    if not flags.bind:
        return list(addresses)
    bind_host, _ = split_host_port(flags.bind)
    host = flags.advertise or (host_towards(flags.learner) if is_wildcard(bind_host) else bind_host)
    return [join_host_port(host, split_host_port(address)[1]) for address in addresses]


SERVERS = flags_lib.FlagGroup(add_server_flags, server_problems)
# Mutual TLS or --insecure beyond loopback (torchbeast/core/transport.py); polybeast_learner takes it too.
TLS = flags_lib.FlagGroup(add_tls_flags, tls_problems)


def make_parser() -> flags_lib.FlagParser:
    return flags_lib.FlagParser("python -m torchbeast.polybeast_env", __doc__.split("\n\n")[0],
                                (flags_lib.ENV, SERVERS, TLS))


def serve_until_stopped(flags: argparse.Namespace) -> StopReason:
    """Runs the servers until one exits (failed) or Ctrl-C / SIGTERM (interrupted), then stops all."""
    addresses = server_addresses(flags.pipes_basename, flags.bind, flags.num_servers)
    for address in addresses:  # before any process starts: a served address is refused (exit 2)
        claim_address(address)
    tls = load_tls(flags)
    advertised = advertised_addresses(flags, addresses) if flags.learner else addresses
    warn_if_insecure(flags, [*addresses, *([flags.learner] if flags.learner else [])])
    transports = [Transport(tls=tls, learner=flags.learner, advertised=a) for a in advertised]
    processes = start_servers(EnvSpec.from_flags(flags), addresses, transports=transports)
    running = servers_running(processes, addresses)
    log.info("Serving %s on %s%s", flags.env, ", ".join(addresses), " (mutual TLS)" if tls and flags.bind else "")
    if flags.learner:
        log.info("Registering %s with the learner at %s", ", ".join(advertised), flags.learner)
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
    exit_now(main())
