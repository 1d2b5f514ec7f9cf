"""What every command-line entry point does around its work: logging, signals, one-line errors,
exit codes.

Exit status: 0 when the command finished, or when Ctrl-C or SIGTERM stopped it cleanly (a
training run saves its checkpoint first); 1 when a run failed (one line names what failed, and
where); 2 for bad input (one line naming the flag, file or address); 130 when interrupted before
a run started (during start-up or --mode test).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
from typing import Callable, Iterator, Optional

from torchbeast.core.supervisor import Outcome, StopReason
from torchbeast.errors import ConfigError


def setup_logging() -> None:
    logging.basicConfig(format="[%(levelname)s %(asctime)s] %(message)s", level=logging.INFO)


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, SLURM, Kubernetes) stops the run the way Ctrl-C does: saved, children ended.

    It also stops runs started in the background by a shell, where SIGINT is ignored."""
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(reason: Optional[StopReason]) -> int:
    """The exit status for how a command ended (None: it had nothing to stop, e.g. test mode)."""
    if reason is None or reason.outcome is not Outcome.FAILED:
        return 0
    return 2 if reason.config_error else 1


def run_command(name: str, body: Callable[[], Optional[StopReason]]) -> int:
    """Runs `body` and turns how it ended into one line on stderr (on error) and an exit status."""
    try:
        with sigterm_as_interrupt():
            reason = body()
    except ConfigError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    if reason is not None and reason.outcome is Outcome.FAILED:
        print(f"{name}: error: {reason.detail}", file=sys.stderr)
    return exit_status(reason)


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
