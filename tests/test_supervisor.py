"""The supervising loop without envs: stop reasons, what runs at the end, exit statuses, the
progress line's step rate and when the learning curve is redrawn."""
import os
import signal
import threading
import time

import pytest

from torchbeast.core import cli
from torchbeast.core.supervisor import (
    Outcome,
    StopReason,
    WatchedThread,
    exited_processes,
    run_learner,
    stop_signals_as_interrupt,
)
from torchbeast.errors import ConfigError


class FakeState:
    """What run_learner needs of LearnerState, recording the calls."""

    def __init__(self, total_steps=1000):
        self.step = 0
        self.total_steps = total_steps
        self.calls = []

    @property
    def done(self):
        return self.step >= self.total_steps

    def save(self):
        self.calls.append("save")

    def close(self):
        self.calls.append("close")


class CountingReporter:
    def __init__(self):
        self.ticks = 0

    def tick(self):
        self.ticks += 1


def learn_steps(state, per_update=100, delay=0.01):
    """A learner body adding `per_update` steps every `delay` seconds until stopped or done."""
    lock = threading.Lock()

    def learn(stop):
        while not stop.is_set() and not state.done:
            time.sleep(delay)
            with lock:
                if not state.done:
                    state.step += per_update
    return learn


def waits_for_stop(stop):
    stop.wait()


class FakeProcess:
    def __init__(self, exitcode=None):
        self.exitcode = exitcode

    def is_alive(self):
        return self.exitcode is None


def run(state, learn, **kwargs):
    kwargs.setdefault("tick_s", 0.01)
    return run_learner(state, CountingReporter(), learn, kwargs.pop("threads", 2), **kwargs)


def test_finished_at_total_steps_saves_and_closes_once():
    state = FakeState(total_steps=1000)
    released = []
    reason = run(state, learn_steps(state), release=lambda: released.append(state.calls[:]))
    assert reason == StopReason.finished("reached --total_steps 1000")
    assert state.step == 1000
    assert released == [[]]  # released once, before the save
    assert state.calls == ["save", "close"]
    assert cli.exit_status(reason) == 0


def test_a_learner_thread_that_raises_fails_the_run_naming_the_thread():
    state = FakeState()

    def learn(stop):
        if threading.current_thread().name == "learner-1":
            raise RuntimeError("shapes do not match\nsecond line")
        stop.wait()

    reason = run(state, learn)
    assert reason.outcome is Outcome.FAILED
    assert reason.detail == "learner-1 failed: RuntimeError: shapes do not match"
    assert isinstance(reason.error, RuntimeError) and not reason.config_error
    assert state.calls == ["save", "close"]
    assert cli.exit_status(reason) == 1


def test_bad_input_found_by_a_learner_thread_is_a_config_error():
    state = FakeState()

    def learn(stop):
        raise ConfigError("--env foo: unknown")

    reason = run(state, learn)
    assert reason.outcome is Outcome.FAILED and reason.config_error and reason.detail == "--env foo: unknown"
    assert cli.exit_status(reason) == 2


def test_a_dead_process_fails_the_run_with_what_and_where():
    state = FakeState()
    server = FakeProcess()
    check = exited_processes([("env server env-server-0 (unix:/tmp/x/env.0)", FakeProcess()),
                              ("env server env-server-2 (unix:/tmp/x/env.2)", server)])
    threading.Timer(0.1, lambda: setattr(server, "exitcode", -9)).start()
    reason = run(state, waits_for_stop, health_checks=[check])
    assert reason == StopReason.failed("env server env-server-2 (unix:/tmp/x/env.2) exited with code -9 (SIGKILL)")
    assert state.calls == ["save", "close"] and state.step == 0


def test_a_dead_process_is_reported_only_after_its_grace_period():
    actor = FakeProcess(exitcode=1)
    check = exited_processes([("actor 3 (pid 7)", actor)], grace_s=0.2)
    assert check() is None
    time.sleep(0.25)
    assert check() == StopReason.failed("actor 3 (pid 7) exited with code 1")


def test_learner_failures_come_before_health_checks():
    # A failed actor's own report (through a learner thread) says more than its exit code.
    state = FakeState()

    def learn(stop):
        raise RuntimeError("actor 0 failed: ValueError: bad frame")

    dead = exited_processes([("actor 0 (pid 9)", FakeProcess(exitcode=1))])
    reason = run(state, learn, threads=1, health_checks=[dead])
    assert "actor 0 failed: ValueError: bad frame" in reason.detail


@pytest.fixture
def python_sigint_handler():
    """Python's own Ctrl-C handler, also where a shell started the tests with SIGINT ignored; both
    stop signals' handlers are put back afterwards (after a stop signal they stay ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, previous[0])
    signal.signal(signal.SIGTERM, previous[1])


@pytest.mark.parametrize("signum,detail,status", [(signal.SIGTERM, "SIGTERM", 143),
                                                  (signal.SIGINT, "SIGINT (Ctrl-C)", 130)])
def test_a_signal_interrupts_the_run_which_saves(python_sigint_handler, signum, detail, status):
    state = FakeState(total_steps=10**12)
    threading.Timer(0.2, os.kill, (os.getpid(), signum)).start()
    with stop_signals_as_interrupt():
        reason = run(state, learn_steps(state))
    assert reason == StopReason.interrupted(detail) and reason.signum == signum
    assert state.calls == ["save", "close"] and state.step > 0
    assert cli.exit_status(reason) == status  # 128 + the signal: a requeue script can tell it from finished


class SlowSavingState(FakeState):
    """A save that a second and third signal land in (a double Ctrl-C; `timeout` signalling the
    process, then its group)."""

    def save(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # the handler runs in between
        self.calls.append("save")


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_signals_during_shutdown_are_ignored(python_sigint_handler, capfd, first):
    state = SlowSavingState(total_steps=10**12)
    threading.Timer(0.2, os.kill, (os.getpid(), first)).start()
    with stop_signals_as_interrupt():
        reason = run(state, learn_steps(state))
        time.sleep(0.1)  # also after run_learner returned: the trainer still stops its children
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    assert reason.outcome is Outcome.INTERRUPTED and reason.signum == first
    assert state.calls == ["save", "close"]
    assert capfd.readouterr().err.count("ignored: already stopping") == 3


def test_a_signal_while_a_finished_run_saves_does_not_change_why_it_stopped(python_sigint_handler):
    state = SlowSavingState(total_steps=300)
    with stop_signals_as_interrupt():
        reason = run(state, learn_steps(state))
    assert reason.outcome is Outcome.FINISHED and state.calls == ["save", "close"]
    assert cli.exit_status(reason) == 0


def test_handlers_stay_ignored_after_a_stop_signal(python_sigint_handler):
    with pytest.raises(KeyboardInterrupt):
        with stop_signals_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises here
    assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_handlers_are_restored_after_the_run(python_sigint_handler):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    state = FakeState(total_steps=100)
    with stop_signals_as_interrupt():
        run(state, learn_steps(state), threads=1)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_release_wakes_learner_threads_blocked_on_a_queue():
    state = FakeState(total_steps=100)
    queue_closed = threading.Event()

    def learn(stop):
        if threading.current_thread().name == "learner-0":
            state.step = 100
        queue_closed.wait()  # as a thread blocked on an empty learner queue

    start = time.monotonic()
    reason = run(state, learn, release=queue_closed.set, join_timeout_s=10)
    assert reason.outcome is Outcome.FINISHED and time.monotonic() - start < 5


def test_an_exception_in_release_still_saves():
    state = FakeState(total_steps=0)

    def release():
        raise OSError("socket gone")

    with pytest.raises(OSError):
        run(state, waits_for_stop, release=release)
    assert state.calls == ["save", "close"]


def test_watched_thread_reports_an_unexpected_end():
    thread = WatchedThread("actor pool", lambda: None)
    assert thread.failure() is None  # not started yet
    thread.start()
    thread.join()
    assert thread.failure() == StopReason.failed("actor pool ended unexpectedly")


def test_run_command_lines_and_exit_statuses(capsys):
    assert cli.run_command("x", lambda: StopReason.finished("reached --total_steps 5")) == 0
    assert cli.run_command("x", lambda: None) == 0
    assert capsys.readouterr().err == ""
    assert cli.run_command("x", lambda: StopReason.failed("actor 1 (pid 5) exited with code 1")) == 1
    assert capsys.readouterr().err == "x: error: actor 1 (pid 5) exited with code 1\n"

    def bad_input():
        raise ConfigError("--batch_size must be positive, got 0")

    assert cli.run_command("x", bad_input) == 2
    assert capsys.readouterr().err == "x: error: --batch_size must be positive, got 0\n"

    def interrupted_before_the_run():
        raise KeyboardInterrupt

    assert cli.run_command("x", interrupted_before_the_run) == 130
    assert capsys.readouterr().err == "x: interrupted (SIGINT (Ctrl-C))\n"

    def terminated_before_the_run():
        raise KeyboardInterrupt("SIGTERM")

    assert cli.run_command("x", terminated_before_the_run) == 143
    assert cli.run_command("x", lambda: StopReason.interrupted("SIGTERM")) == 143
    assert cli.run_command("x", lambda: StopReason.interrupted("SIGINT (Ctrl-C)")) == 130
