"""What every command-line entry point does around its work: logging, signals, one-line errors,
exit codes.

Exit status: 0 when the command finished (a training run reached --total_steps, or already had);
130 when stopped by SIGINT (Ctrl-C) and 143 by SIGTERM (128 + the signal, as a shell reports it),
at any moment (a training run saves its checkpoint first); 1 when a run failed (one line names
what failed, and where); 2 for bad input (one line naming the flag, file or address).
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
from typing import Callable, Iterator, NoReturn, Optional

from torchbeast.core.supervisor import Outcome, StopReason, interrupt_detail, stop_signals_as_interrupt
from torchbeast.errors import ConfigError


def quiet_env_logging() -> None:
    """For processes that step Memory Maze: drops dm_control's per-reset "Cannot set velocity"
    warning and PyOpenGL's info lines."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("OpenGL").setLevel(logging.WARNING)


def setup_logging() -> None:
    logging.basicConfig(format="[%(levelname)s %(asctime)s] %(message)s", level=logging.INFO)


def exit_status(reason: Optional[StopReason]) -> int:
    """The exit status for how a command ended (None: it ended without a run, e.g. test mode)."""
    if reason is None or reason.outcome is Outcome.FINISHED:
        return 0
    if reason.outcome is Outcome.INTERRUPTED:
        return 128 + reason.signum
    return 2 if reason.config_error else 1


def run_command(name: str, body: Callable[[], Optional[StopReason]]) -> int:
    """Runs `body` and turns how it ended into one line on stderr (on error) and an exit status."""
    try:
        # SIGTERM (kill, Slurm, Kubernetes) stops a run the way Ctrl-C does: saved, children ended;
        # it also stops runs started in the background by a shell, where SIGINT is ignored.
        with stop_signals_as_interrupt():
            reason = body()
    except ConfigError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # before a run started, or in --mode test
        reason = StopReason.interrupted(interrupt_detail(interrupt))
        print(f"{name}: interrupted ({reason.detail})", file=sys.stderr)
        return exit_status(reason)
    if reason is not None and reason.outcome is Outcome.FAILED:
        print(f"{name}: error: {reason.detail}", file=sys.stderr)
    return exit_status(reason)


def exit_now(status: int) -> NoReturn:
    """Ends the process with `status` once the exit handlers have run and the output is flushed,
    skipping the interpreter's teardown: freeing torch's modules and static objects takes 2-3 s
    on a busy 2-core host, after the run has saved, closed its files and stopped its children.
    For an entry point's `if __name__ == "__main__"`; C++ threads still running end with it."""
    try:
        atexit._run_exitfuncs()  # multiprocessing's finalizers (semaphores), logging.shutdown, ...
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


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
