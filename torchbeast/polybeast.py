"""PolyBeast on one machine: starts the env servers and the learner together.

    python -m torchbeast.polybeast --env memory_maze:MemoryMaze-9x9-ExtraObs-v0 --num_servers 4

Takes the learner's flags (see `python -m torchbeast.polybeast_learner --help`) except
--env_servers: it starts its own servers, on unix sockets under a fresh temporary folder unless
--pipes_basename is given. All of them are stopped when training ends, on Ctrl-C or SIGTERM, or
when any part fails, a server included (no orphans, no stale sockets). --mode test runs the
saved agent locally, like MonoBeast's.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from typing import List, Optional

from torchbeast import polybeast_env, polybeast_learner
from torchbeast.core import flags as flags_lib
from torchbeast.core.cli import exit_now, run_command, setup_logging
from torchbeast.core.evaluate import test
from torchbeast.core.supervisor import StopReason
from torchbeast.errors import ConfigError


def add_local_server_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("env servers")
    group.add_argument("--num_servers", type=int, default=4,
                       help="Env server processes to start, one actor each. (default: %(default)s)")
    group.add_argument("--pipes_basename", default=None,
                       help="Serve on unix sockets BASENAME.0 ... BASENAME.N-1, e.g. unix:/tmp/pb. "
                            "(default: sockets in a fresh temporary folder, removed at the end)")


def local_server_problems(flags: argparse.Namespace) -> List[str]:
    if flags.num_servers <= 0:
        return [f"--num_servers must be positive, got {flags.num_servers}"]
    if flags.pipes_basename is not None:
        try:
            polybeast_env.server_addresses(flags.pipes_basename, None, flags.num_servers)
        except ConfigError as e:
            return [str(e)]
    return []


LOCAL_SERVERS = flags_lib.FlagGroup(add_local_server_flags, local_server_problems)


def make_parser() -> flags_lib.FlagParser:
    hints = dict(polybeast_learner.MONOBEAST_ONLY, **{
        "--env_servers": "polybeast starts its own servers; use polybeast_learner to connect to running ones"})
    return flags_lib.FlagParser(
        "python -m torchbeast.polybeast", __doc__.split("\n\n")[0],
        (flags_lib.ENV, flags_lib.AGENT, flags_lib.TRAINING, LOCAL_SERVERS, polybeast_learner.INFERENCE,
         flags_lib.SYSTEM),
        hints=hints)


def train(flags: argparse.Namespace) -> StopReason:
    """Starts the servers, trains against them, and stops them (and removes their sockets)."""
    with contextlib.ExitStack() as cleanup:
        pipes_basename, socket_dir = flags.pipes_basename, None
        if pipes_basename is None:
            socket_dir = tempfile.mkdtemp(prefix="polybeast-")
            cleanup.callback(shutil.rmtree, socket_dir, ignore_errors=True)
            pipes_basename = f"unix:{socket_dir}/env"
        addresses = polybeast_env.unix_addresses(pipes_basename, flags.num_servers)
        servers = polybeast_env.start_servers(polybeast_env.EnvSpec.from_flags(flags), addresses,
                                              socket_folder=socket_dir)
        cleanup.callback(polybeast_env.stop_servers, servers)
        return polybeast_learner.train(flags, addresses,
                                       health_checks=[polybeast_env.servers_running(servers, addresses)])


def main(argv: Optional[List[str]] = None) -> int:
    setup_logging()
    parser = make_parser()

    def body() -> Optional[StopReason]:
        flags = parser.parse_flags(argv)
        if flags.mode == "test":
            test(flags, num_workers=flags.num_servers)  # as many processes as training's env servers
            return None
        return train(flags)

    return run_command("polybeast", body)


if __name__ == "__main__":
    exit_now(main())
