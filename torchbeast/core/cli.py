"""What every command-line entry point does around its work: logging, one-line errors, exit codes."""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
from typing import Callable, Iterator

from torchbeast.errors import ConfigError


def setup_logging() -> None:
    logging.basicConfig(format="[%(levelname)s %(asctime)s] %(message)s", level=logging.INFO)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, SLURM, Kubernetes) stops the run the way Ctrl-C does: saved, children ended.

    It also stops runs started in the background by a shell, where SIGINT is ignored."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(name: str, body: Callable[[], None]) -> int:
    """Runs `body`: bad input is one line on stderr and exit status 2; Ctrl-C is status 130."""
    try:
        with sigterm_as_interrupt():
            body()
    except ConfigError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return 0


@contextlib.contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Processes started inside ignore SIGINT from their first instruction.

    Ctrl-C reaches the whole process group; the parent handles it and stops its children itself
    (saving first). A spawned child that got it while still importing torch would die with a
    traceback. An ignored SIGINT is inherited through fork and exec, and Python keeps it ignored.
    """
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
