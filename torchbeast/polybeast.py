"""PolyBeast on one machine: starts the env servers and the learner together.

    python -m torchbeast.polybeast --env memory_maze:MemoryMaze-9x9-ExtraObs-v0 --num_servers 4

Takes the learner's flags (see `python -m torchbeast.polybeast_learner --help`). The servers
listen on unix sockets under a fresh temporary folder unless --pipes_basename is given, and all
of them are stopped when training ends, on Ctrl-C, or when any part fails (no orphans, no stale
sockets). --mode test runs the saved agent locally, like MonoBeast's.
"""
from __future__ import annotations

import _thread
import logging
import shutil
import sys
import tempfile
import threading
from typing import List, Optional

from torchbeast import polybeast_env, polybeast_learner
from torchbeast.core import flags as flags_lib
from torchbeast.core.evaluate import test
from torchbeast.errors import ConfigError

log = logging.getLogger("torchbeast")


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="[%(levelname)s %(asctime)s] %(message)s", level=logging.INFO)
    parser = polybeast_learner.make_parser()
    parser.prog = "python -m torchbeast.polybeast"
    parser.description = __doc__.split("\n\n")[0]
    parser.set_defaults(pipes_basename=None)  # default: sockets in a fresh temporary folder
    socket_dir = None
    try:
        flags = flags_lib.parse_flags(parser, argv)
        if flags.mode == "test":
            test(flags)
            return 0
        if flags.env_servers:
            raise ConfigError("--env_servers: polybeast starts its own servers; use polybeast_learner to "
                              "connect to running ones")
        if flags.pipes_basename is None:
            socket_dir = tempfile.mkdtemp(prefix="polybeast-")
            flags.pipes_basename = f"unix:{socket_dir}/env"
        polybeast_learner.validate_polybeast(flags)
        addresses = polybeast_env.server_addresses(flags.pipes_basename, None, flags.num_servers)
    except ConfigError as e:
        print(f"polybeast: error: {e}", file=sys.stderr)
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)
        return 2

    servers = polybeast_env.start_servers(flags, addresses)
    finished = threading.Event()
    failed: List[str] = []

    def watch_servers() -> None:
        while not finished.wait(0.5):
            # Exit code 0 is a server told to stop (Ctrl-C reaches the whole process group).
            dead = [p for p in servers if not p.is_alive() and p.exitcode != 0]
            if dead:
                failed.append(f"{dead[0].name} exited with code {dead[0].exitcode}")
                _thread.interrupt_main()  # the learner saves and stops as on Ctrl-C
                return

    threading.Thread(target=watch_servers, name="server-watch", daemon=True).start()
    try:
        polybeast_learner.train(flags)
    except ConfigError as e:
        print(f"polybeast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        finished.set()
        polybeast_env.stop_servers(servers)
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)
    if failed:
        print(f"polybeast: error: {failed[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
