"""Child processes that end with the process that started them, even when it is SIGKILLed.

A parent that stops normally ends its children itself (env servers, actors, evaluation workers,
a sweep's runs). A parent killed with SIGKILL (the OOM killer, `kill -9`, a scheduler) cannot,
and its children would live on as orphans holding ~1 GB each, sockets and GPU memory. Linux's
PR_SET_PDEATHSIG makes the kernel send the child a signal when its parent exits, however it
ends. Each child asks for it first thing (`die_with_parent`), then checks that its parent is
still the one that started it: a parent that died before the request (while the child was still
importing) would otherwise never be noticed.

The signal comes when the parent *thread* that started the child exits: start children from a
thread that lives as long as they should (our entry points start them from the main thread).
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from typing import Callable, Optional

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Looked up once at import, so that the preexec function of a forked child (subprocess) only calls it.
_prctl: Optional[Callable[..., int]] = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # no libc symbols to hand (a static or unusual Python)
        _prctl = None


def die_with_parent(signum: int = signal.SIGTERM, parent_pid: Optional[int] = None) -> None:
    """In a child process: the kernel sends it `signum` when its parent exits; if the parent has
    already gone, the child exits at once with status 128 + `signum`.

    `parent_pid` is the pid of the process that started this one; by default the multiprocessing
    parent (spawned children), else the current parent. SIGTERM suits a child that cleans up
    (a server removing its socket, a training run saving); SIGKILL one with nothing to save.
    Does nothing where prctl is not available (not Linux).
    """
    if _prctl is None:
        return
    if parent_pid is None:
        parent = multiprocessing.parent_process()
        parent_pid = parent.pid if parent is not None else os.getppid()
    if _prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != parent_pid:  # the parent died before the request: it will not be signalled
        os._exit(128 + int(signum))  # as if the signal had come (no handler of ours runs this early)


def preexec_die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen: the command started gets `signum` when the calling
    process exits (the setting survives exec)."""
    parent_pid = os.getpid()
    return lambda: die_with_parent(signum, parent_pid)
