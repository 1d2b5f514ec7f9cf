"""MonoBeast's actor restarts without processes: buffers of a dead actor go back to the others,
repeated deaths stop the run, and the learner reads each actor's own channel."""
import multiprocessing as mp
import os
import queue
from multiprocessing.connection import Connection

import pytest

from torchbeast.core.supervisor import Outcome
from torchbeast.monobeast import ActorChannels, ActorError, ActorRestarts, FullQueueEnd


class FakeActor:
    pids = iter(range(100, 10**6))

    def __init__(self, index):
        self.index, self.pid, self.exitcode = index, next(FakeActor.pids), None

    def is_alive(self):
        return self.exitcode is None


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def actors():
    """(ActorRestarts over 2 fake actors, their ActorChannels, the full-queue ends, the clock)."""
    channels = ActorChannels(mp.get_context("spawn"), 2)
    ends, clock = {}, Clock()

    def start(i, free_queue, full_queue):
        # The "actor's" copy of its pipe end (a real one is inherited; the learner closes its own).
        ends[i] = (free_queue, FullQueueEnd(Connection(os.dup(full_queue.connection.fileno()), readable=False)))
        return FakeActor(i)

    restarts = ActorRestarts(start, channels, 2, max_deaths=3, window_s=60, clock=clock)
    yield restarts, channels, ends, clock
    for i in range(2):
        channels.reclaim(i)
    for _, full_queue in ends.values():
        full_queue.close()


def test_buffers_are_shared_out_and_come_back_through_each_actors_channel(actors):
    restarts, channels, ends, _ = actors
    for m in range(4):
        channels.put(m)
    assert channels.held == [{0, 2}, {1, 3}]
    free0, full0 = ends[0]
    taken = free0.get()
    full0.connection.send(taken)  # as fill_rollouts' full_queue.put(index), from the actor process
    assert channels.get(timeout=1.0) == taken and channels.held[0] == {0, 2} - {taken}
    with pytest.raises(queue.Empty):
        channels.get(timeout=0.05)


def test_a_dead_actor_is_restarted_with_its_buffers_given_back(actors, caplog):
    restarts, channels, ends, _ = actors
    for m in range(4):
        channels.put(m)
    dead = restarts.actors[1]
    dead.exitcode = -9
    assert restarts() is None
    assert restarts.actors[1] is not dead and restarts.actors[1].is_alive()
    assert f"actor 1 (pid {dead.pid}) exited with code -9 (SIGKILL); restarted it as pid" in caplog.text
    assert sorted(channels.held[0] | channels.held[1]) == [0, 1, 2, 3]  # nothing lost, nothing twice
    assert channels.held[1]  # the new process got some


def test_an_actors_failure_report_is_logged_not_fatal_but_bad_input_is_returned(actors, caplog):
    restarts, channels, ends, _ = actors
    ends[0][1].put(ActorError(0, "RuntimeError: boom", False))
    with pytest.raises(queue.Empty):
        channels.get(timeout=0.2)
    assert "actor 0 failed: RuntimeError: boom" in caplog.text
    ends[1][1].put(ActorError(1, "ConfigError: --env x: unknown", True))
    assert channels.get(timeout=1.0).is_config_error


def test_repeated_deaths_stop_the_run(actors):
    restarts, channels, ends, clock = actors
    for t in (0.0, 30.0, 100.0, 120.0):  # the first death is out of the window by the 4th
        clock.now = t
        restarts.actors[0].exitcode = 1
        assert restarts() is None
    clock.now = 130.0
    restarts.actors[1].exitcode = -11
    reason = restarts()
    assert reason.outcome is Outcome.FAILED
    assert reason.detail.startswith("actor 1 (pid ") and "-11 (SIGSEGV); 3 actor deaths within 60 s" in reason.detail


def test_an_actor_that_ended_by_itself_fails_the_run_after_its_grace_period(actors):
    restarts, channels, ends, clock = actors
    restarts.actors[0].exitcode = 0  # it reported bad input, which the learner raises
    assert restarts() is None
    clock.now = 2.0
    assert restarts().detail.endswith("exited with code 0")


def test_restarted_actors_and_resumed_runs_do_not_replay_the_mazes():
    from torchbeast.monobeast import actor_seed

    first = [actor_seed(1, i, 0, 0) for i in range(3)]
    assert first == [1000, 1001, 1002]  # a fresh run keeps its seeds
    restarted = actor_seed(1, 0, 1, 0)
    resumed = actor_seed(1, 0, 0, 64_000)
    assert len({*first, restarted, resumed, actor_seed(1, 0, 2, 0), actor_seed(2, 0, 1, 0)}) == 7
    assert actor_seed(1, 0, 1, 0) == restarted  # still repeatable
    assert actor_seed(None, 0, 3, 10) is None
