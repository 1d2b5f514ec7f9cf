"""The loop that supervises a training run, shared by MonoBeast and PolyBeast.

`run_learner` starts the learner threads, ticks the reporter (progress lines, learning curve,
checkpoints) and polls the trainer's health checks (actor processes, the actor pool and inference
threads, env servers) until the run stops for one `StopReason`: finished (--total_steps reached),
interrupted (Ctrl-C, SIGTERM) or failed (what failed, and where). Whatever the reason, it then
releases the workers, joins the learner threads, saves a checkpoint and closes the outputs.

Stop signals: inside `stop_signals_as_interrupt()` the first SIGINT or SIGTERM raises
KeyboardInterrupt in the main thread; from then on (and from the moment `run_learner` starts
shutting down for any reason) further ones are ignored, so a double Ctrl-C, or `timeout` signalling
the process and then its group, cannot break the final checkpoint or the stopping of children.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence, Tuple

from torchbeast.errors import ConfigError

log = logging.getLogger("torchbeast")


class Outcome(enum.Enum):
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class StopReason:
    """Why a run stopped; `detail` says what happened in words a user reads."""

    outcome: Outcome
    detail: str
    config_error: bool = False  # a failure caused by bad input (exit status 2 rather than 1)
    signum: int = 0  # the signal behind an interrupted run (exit status 128 + signum)
    error: Optional[BaseException] = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def finished(cls, detail: str) -> "StopReason":
        return cls(Outcome.FINISHED, detail)

    @classmethod
    def interrupted(cls, detail: str, signum: Optional[int] = None) -> "StopReason":
        """Stopped by a signal; without `signum`, SIGTERM when `detail` starts with it, else SIGINT."""
        if signum is None:
            signum = signal.SIGTERM if detail.startswith("SIGTERM") else signal.SIGINT
        return cls(Outcome.INTERRUPTED, detail, signum=int(signum))

    @classmethod
    def failed(cls, detail: str, error: Optional[BaseException] = None) -> "StopReason":
        return cls(Outcome.FAILED, detail, config_error=isinstance(error, ConfigError), error=error)

    def __str__(self) -> str:
        return f"{self.outcome.value}: {self.detail}"


class RunFailure(RuntimeError):
    """A failure that its message says all about (no traceback), e.g. a diverged model."""


# A health check returns the reason to stop when something the run depends on has failed, else None.
HealthCheck = Callable[[], Optional[StopReason]]


_SIGNAL_DETAILS = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}


def interrupt_detail(interrupt: KeyboardInterrupt) -> str:
    """The signal behind a KeyboardInterrupt (`stop_signals_as_interrupt` raises one naming it)."""
    return str(interrupt) or _SIGNAL_DETAILS[signal.SIGINT]


# Set by the first stop signal, or when a run starts stopping: later signals are then ignored.
_shutting_down = threading.Event()
_interrupted = threading.Event()  # a stop signal arrived: the command ends with its exit status


def begin_shutdown() -> None:
    """From now on SIGINT and SIGTERM are ignored (inside `stop_signals_as_interrupt`): what is
    left to do (the checkpoint, stopping children) must not be cut short by a second signal."""
    _shutting_down.set()


def _interrupt(signum: int, frame: object) -> None:
    if _shutting_down.is_set():
        name = signal.Signals(signum).name
        os.write(2, f"[{name} ignored: already stopping, saving and stopping the workers]\n".encode())
        return
    _shutting_down.set()
    _interrupted.set()
    raise KeyboardInterrupt(_SIGNAL_DETAILS[signal.Signals(signum)])


@contextlib.contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM (kill, Slurm, Kubernetes) raise KeyboardInterrupt once, in the
    main thread; further ones, and any during a run's shutdown, are ignored. A SIGINT that is
    already ignored (a run started in the background by a shell) stays ignored. After a stop
    signal the command is ending with that signal's exit status: further ones stay ignored
    instead of the previous handlers (the default one kills the process) coming back."""
    _shutting_down.clear()
    _interrupted.clear()
    previous = {signum: signal.getsignal(signum) for signum in _SIGNAL_DETAILS}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN or signum == signal.SIGTERM:
            signal.signal(signum, _interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if _interrupted.is_set():
                handler = signal.SIG_IGN
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _shutting_down.clear()


class WatchedThread:
    """A daemon thread whose exception is kept (not printed) for the supervisor to report."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        self.name = name
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(target, *args), name=name, daemon=True)

    def _run(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except BaseException as e:  # noqa: BLE001 - reported by failure()
            self.error = e

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: Optional[float] = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def raised(self) -> Optional[StopReason]:
        """The failure, when the thread raised."""
        if self.error is None:
            return None
        if isinstance(self.error, ConfigError):
            return StopReason.failed(str(self.error), self.error)
        if isinstance(self.error, RunFailure):
            return StopReason.failed(f"{self.name}: {self.error}")
        message = str(self.error).strip().splitlines()[0] if str(self.error).strip() else ""
        return StopReason.failed(f"{self.name} failed: {type(self.error).__name__}: {message}", self.error)

    def failure(self) -> Optional[StopReason]:
        """A health check for a thread that must run as long as the run: it raised, or it ended."""
        raised = self.raised()
        if raised is not None or self._thread.ident is None or self._thread.is_alive():
            return raised
        return StopReason.failed(f"{self.name} ended unexpectedly")


def exited_processes(processes: Sequence[Tuple[str, Any]], grace_s: float = 0.0) -> HealthCheck:
    """A health check for processes that must run as long as the run.

    `processes` are (label, multiprocessing.Process) pairs; the label says what the process is in
    the failure, e.g. 'env server env-server-2 (unix:/tmp/x/env.2)'. A process is reported once it
    has been seen dead for `grace_s` seconds (time for its own report of why to arrive first).
    """
    first_seen_dead: dict = {}

    def check() -> Optional[StopReason]:
        now = time.monotonic()
        for label, process in processes:
            if process.is_alive():
                continue
            if now - first_seen_dead.setdefault(label, now) >= grace_s:
                return StopReason.failed(f"{label} exited with code {exit_code_text(process.exitcode)}")
        return None

    return check


def exit_code_text(code: Optional[int]) -> str:
    """A process's exit code in words: '1', or '-9 (SIGKILL)' when a signal ended it."""
    if code is not None and code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


class Learning(Protocol):
    """What the loop needs of the learner's state (`torchbeast.core.training.LearnerState`)."""

    step: int
    total_steps: int

    @property
    def done(self) -> bool: ...

    def save(self) -> Optional[bool]: ...  # False: deliberately not saved (it says why)

    def close(self) -> None: ...


class Ticking(Protocol):
    def tick(self) -> None: ...


def run_learner(
    state: Learning,
    reporter: Ticking,
    learn: Callable[[threading.Event], None],
    num_learner_threads: int,
    health_checks: Sequence[HealthCheck] = (),
    release: Callable[[], None] = lambda: None,
    tick_s: float = 0.2,
    join_timeout_s: float = 30.0,
) -> StopReason:
    """Runs `num_learner_threads` threads of `learn(stop)` until the run stops; returns why.

    `learn` takes batches and updates until `stop` is set or `state.done`. `release` is called
    once when the run stops, before the learner threads are joined: it wakes whatever they may
    be blocked on (closes queues, stops the actor pool). Ctrl-C and SIGTERM reach this loop as
    KeyboardInterrupt, in the main thread; once the run stops, further signals are ignored
    (`begin_shutdown`) until the process exits or `stop_signals_as_interrupt` ends.
    """
    stop = threading.Event()
    learners = [WatchedThread(f"learner-{i}", learn, stop) for i in range(num_learner_threads)]
    start_time, start_step = time.monotonic(), state.step
    reason: Optional[StopReason] = None
    for thread in learners:
        thread.start()
    try:
        while reason is None:
            time.sleep(tick_s)
            reason = _first_failure(learners, health_checks)
            if reason is None and state.done:
                reason = StopReason.finished(f"reached --total_steps {state.total_steps}")
            elif reason is None and not any(thread.is_alive() for thread in learners):
                reason = StopReason.failed("the learner threads ended before --total_steps")
            if reason is None:
                reporter.tick()
    except KeyboardInterrupt as interrupt:
        if reason is None:  # a signal just after the run finished or failed does not change why
            reason = StopReason.interrupted(interrupt_detail(interrupt))
    finally:
        begin_shutdown()
        stop.set()
        try:
            release()
        finally:
            for thread in learners:
                thread.join(timeout=join_timeout_s)
            try:
                saved = state.save()
            finally:
                state.close()
    if reason.outcome is Outcome.FAILED and reason.error is not None and not reason.config_error:
        log.error("%s", reason.detail, exc_info=reason.error)  # the traceback, for a bug
    elapsed = time.monotonic() - start_time
    steps = state.step - start_step
    level = logging.ERROR if reason.outcome is Outcome.FAILED else logging.INFO
    log.log(level, "Stopped (%s). Trained %d steps in %.0f s (%.1f SPS), to step %d; %s.",
            reason, steps, elapsed, steps / max(elapsed, 1e-9), state.step,
            "checkpoint not saved" if saved is False else "checkpoint saved")
    return reason


def _first_failure(learners: Sequence[WatchedThread], health_checks: Sequence[HealthCheck]) -> Optional[StopReason]:
    # Learner threads first: a failed actor's own report of why reaches them through the queue.
    for thread in learners:
        if thread.raised() is not None:
            return thread.raised()
    for check in health_checks:
        reason = check()
        if reason is not None:
            return reason
    return None
