"""Chaos tests: real processes (env servers, learners, trainers) killed, partitioned and fed
garbage while they train on CueMemory with small models. Each test is bounded in time; the
timings they observe are printed (run with -s), and measured properly by
benchmarks/bench_chaos.py.

- a SIGKILLed env server comes back: training never stops, its actor reconnects, and no rollout
  mixes two connections (a reconnect starts a new episode and a new agent state);
- a network partition of one env host (network namespaces, root only): the learner drops it,
  goes on with the others, and takes it back when the link returns;
- 20 SIGKILLs of the learner at random moments, checkpointing every second: every restart
  resumes from a checkpoint that loads, steps never go back by more than one checkpoint interval;
- a fake env server for each kind of bad input: the learner names it and trains on the good one;
- stop signals to the parent alone or to the whole group, and SIGKILL of the parent: no process
  and no socket is left behind.
"""
import collections
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
from cli import assert_no_process_left
from commands import ENV, Command
from netns import netns_unavailable_reason, network_hosts

from torchbeast.core.checkpoint import load_checkpoint
from torchbeast.core.run_outputs import read_log

CUE = "torchbeast:CueMemory-v0"
SMALL = ["--encoder", "small", "--hidden_size", "16", "--unroll_length", "10", "--batch_size", "4",
         "--log_interval", "1"]
FAKE_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_env_server.py")


@pytest.fixture
def commands():
    """Commands a test starts; whatever is still running at its end is killed (its whole group)."""
    started = []
    yield started
    for command in started:
        command.kill()


def env_server(commands, address, *args, prefix=()):
    """`polybeast_env` serving one CueMemory server at `address` (unix:PATH or HOST:PORT); waits
    until it accepts connections."""
    where = ["--bind", address] if not address.startswith("unix:") else ["--pipes_basename", address[:-2]]
    command = Command.module("torchbeast.polybeast_env", "--env", CUE, "--num_servers", 1, *where, *args,
                             prefix=prefix)
    commands.append(command)
    command.wait_for(r"Serving ", timeout=60)
    return command


def fake_server(commands, address, kind):
    command = Command([sys.executable, FAKE_SERVER, address, kind], name=f"fake server {kind}")
    commands.append(command)
    command.wait_for("^serving$", timeout=60)
    return command


def accepts(address, timeout=60):
    """Waits until a server accepts connections at unix:PATH; the time it first did."""
    path = address[len("unix:"):]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(path)
                return time.monotonic()
            except (ConnectionRefusedError, FileNotFoundError):
                time.sleep(0.02)
    raise AssertionError(f"nothing accepts on {address} after {timeout} s")


def learner(commands, savedir, xpid, addresses, *args):
    command = Command.module("torchbeast.polybeast_learner", "--env", CUE, "--env_servers", *addresses,
                             "--savedir", savedir, "--xpid", xpid, *SMALL, *args)
    commands.append(command)
    return command


def no_traceback(command):
    assert "Traceback" not in command.output() and "terminate called" not in command.output(), command.output()


# ---------------------------------------------------------------------------------------------
# Bad env servers.

BAD = [  # kind, what the learner says about it
    ("shape", "observation 'frame' has shape [3, 64, 65], expected [3, 64, 64]"),
    ("dtype", "observation 'frame' has dtype uint16, expected uint8"),
    ("extra_key", "observation has an unexpected key 'extra'"),
    ("nan", "reward is nan"),
    ("huge", "gRPC status RESOURCE_EXHAUSTED: Received message larger than max (100920146 vs."),
    ("silent", "sent no step within 3"),
    ("byte_length", "step does not decode: NDArray of dtype uint8 and shape [3, 64, 64] needs 12288 bytes, got 12287"),
    ("overflow", "step does not decode: shape [3, 1099511627776, 1099511627776, 1099511627776] has more elements than "
                 "int64 can count"),
]


def test_the_learner_trains_on_the_good_server_and_names_every_bad_one(tmp_path, commands):
    # One good server and one fake server per kind of bad input, which goes bad after a few good
    # steps of every stream (so each is dropped again at every retry, backing off further). --env_timeout_s leaves
    # the huge one time to send its 100 MB on a busy machine.
    good = f"unix:{tmp_path}/good.0"
    env_server(commands, good)
    bad = [f"unix:{tmp_path}/{kind}" for kind, _ in BAD]
    for address, (kind, _) in zip(bad, BAD):
        fake_server(commands, address, kind)
    run = learner(commands, tmp_path, "bad", [good, *bad], "--env_timeout_s", 3, "--total_steps", 100_000_000)
    for i, (address, (_, problem)) in enumerate(zip(bad, BAD), 1):
        run.wait_for(rf"^\[libtorchbeast.ActorPool\] actor {i} \({re.escape(address)}\): dropped: {re.escape(problem)}",
                     timeout=120)
    all_named = time.monotonic()
    run.wait_for(r"^step ", timeout=30, since=all_named)
    run.wait_for(r"^step ", timeout=30, since=all_named + 1)
    assert run.stop() == 128 + signal.SIGTERM, run.output()
    after = [step for t, step in run.steps(since=all_named)]
    assert len(after) >= 2 and after[-1] > after[0], run.output()  # still training
    assert f"({good}): dropped" not in run.output()
    no_traceback(run)
    assert load_checkpoint(str(tmp_path / "bad" / "model.tar"))["step"] > 0


# ---------------------------------------------------------------------------------------------
# A killed env server comes back.

def counting_model(batcher):
    """Action 0; the agent state counts the steps it has seen (so a rollout's initial agent state
    says how many steps of its stream came before it)."""

    def loop():
        for batch in batcher:
            x = batch.get_inputs()
            batch.set_outputs({"action": np.zeros(x["reward"].shape, np.int64),
                               "agent_state": (x["agent_state"][0] + 1,)})

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_a_reconnect_is_a_new_stream_and_no_rollout_mixes_two(tmp_path, commands):
    # A real ActorPool (no learner) against two counting servers; one is SIGKILLed mid-stream and
    # restarted. Every rollout must come from one stream, with steps in order and the agent
    # state that stream's own: the reconnect drops the partial rollout and starts afresh.
    from libtorchbeast import ActorPool, BatchingQueue, DynamicBatcher

    unroll = 5
    victim, other = f"unix:{tmp_path}/victim", f"unix:{tmp_path}/other"
    server = fake_server(commands, victim, "counting")
    fake_server(commands, other, "counting")  # keeps rollouts coming while the victim is down
    queue = BatchingQueue(batch_dim=1, minimum_batch_size=1, maximum_batch_size=1, maximum_queue_size=4)
    batcher = DynamicBatcher(batch_dim=1, minimum_batch_size=1, maximum_batch_size=4, timeout_ms=1)
    model = counting_model(batcher)
    pool = ActorPool(unroll_length=unroll, learner_queue=queue, inference_batcher=batcher,
                     env_server_addresses=[victim, other], initial_agent_state=(np.zeros((1, 1, 1), np.float32),))
    runner = threading.Thread(target=pool.run, daemon=True)
    runner.start()
    rollouts = []
    try:
        def take_until(pid, count, timeout=60):
            deadline = time.monotonic() + timeout
            while sum(int(r["stream"][0]) // 1000 == pid for r in rollouts) < count:
                assert time.monotonic() < deadline, f"fewer than {count} rollouts from server pid {pid}"
                item = queue.dequeue_many()
                rollouts.append(dict(stream=item["rollout"]["observation"]["stream"][:, 0].copy(),
                                     t=item["rollout"]["observation"]["t"][:, 0].copy(),
                                     done=item["rollout"]["done"][:, 0].copy(),
                                     state=float(item["initial_agent_state"][0][0, 0, 0])))

        take_until(server.pid, 3)
        time.sleep(random.uniform(0, 0.05))  # lands anywhere in a rollout
        server.kill()
        server = fake_server(commands, victim, "counting")
        take_until(server.pid, 3)
    finally:
        queue.close()
        batcher.close()
        runner.join(timeout=10)
        model.join(timeout=10)
    assert not runner.is_alive()
    streams = collections.Counter()
    for r in rollouts:
        assert len(set(r["stream"])) == 1, f"a rollout mixes streams {sorted(set(r['stream']))}"
        np.testing.assert_array_equal(r["t"], r["t"][0] + np.arange(unroll + 1))  # its steps, in order
        assert r["state"] == r["t"][0], "the agent state is not that of the rollout's stream"
        np.testing.assert_array_equal(r["done"], r["t"] % 7 == 0)  # a stream begins with an episode
        streams[int(r["stream"][0]) // 1000] += 1
    assert len(streams) == 3, streams  # the victim before and after its restart, and the other


def test_a_killed_env_server_rejoins_and_training_never_stops(tmp_path, commands):
    addresses = [f"unix:{tmp_path}/env{i}.0" for i in range(3)]
    servers = [env_server(commands, address) for address in addresses]
    run = learner(commands, tmp_path, "kill", addresses, "--total_steps", 100_000_000)
    run.wait_for(r"^step +[1-9]", timeout=120)
    servers[1].kill()  # SIGKILL to the server command and its server process
    killed = time.monotonic()
    run.wait_for(r"actor 1: .*; reconnecting in \d+ ms", timeout=30, since=killed)
    servers[1] = env_server(commands, addresses[1])
    back = accepts(addresses[1])
    reconnected, _ = run.wait_for(rf"actor 1: reconnected to {re.escape(addresses[1])}$", timeout=30, since=back)
    run.wait_for(r"^step ", timeout=30, since=reconnected)
    assert run.stop() == 128 + signal.SIGTERM, run.output()
    no_traceback(run)
    during = [step for t, step in run.steps() if killed <= t <= back]
    assert len(during) >= 2 and during[-1] > during[0], (during, run.output())  # it trained meanwhile
    steps = [step for _, step in run.steps()]
    assert steps == sorted(steps)
    assert "dropped" not in run.output()  # a server that went away is not a bad server
    print(f"\nserver down {back - killed:.2f} s; actor reconnected {reconnected - back:.2f} s after it was back")


@pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason()))
def test_a_partitioned_env_host_is_dropped_then_rejoins(tmp_path, commands):
    # Three hosts (network namespaces): the learner and two env hosts. One env host's link goes
    # down for PARTITION_S, longer than --env_timeout_s: the learner drops it, trains on the other
    # and takes it back once the link is up again.
    partition_s, env_timeout_s = 10.0, 3.0  # the 10 s cut, past the timeout
    with network_hosts(["learner", "env0", "env1"]) as hosts:
        addresses = [f"{hosts[name].address}:4431" for name in ("env0", "env1")]
        servers = [env_server(commands, address, "--insecure", prefix=hosts[name].command([]))
                   for name, address in zip(("env0", "env1"), addresses)]
        run = Command.module("torchbeast.polybeast_learner", "--env", CUE, "--env_servers", *addresses, "--insecure",
                             "--env_timeout_s", env_timeout_s, "--savedir", tmp_path, "--xpid", "part", *SMALL,
                             "--total_steps", 100_000_000, prefix=hosts["learner"].command([]))
        commands.append(run)
        run.wait_for(r"^step +[1-9]", timeout=120)
        hosts.disconnect("env1")
        cut = time.monotonic()
        dropped, _ = run.wait_for(rf"actor 1 \({re.escape(addresses[1])}\): dropped: sent no step within 3", timeout=30,
                                  since=cut)
        time.sleep(max(0.0, cut + partition_s - time.monotonic()))
        hosts.reconnect("env1")
        healed = time.monotonic()
        rejoined, _ = run.wait_for(rf"actor 1: reconnected to {re.escape(addresses[1])}$", timeout=60, since=healed)
        run.wait_for(r"^step ", timeout=30, since=rejoined)
        assert run.stop() == 128 + signal.SIGTERM, run.output()
        for server in servers:
            assert server.stop() == 128 + signal.SIGTERM, server.output()
    no_traceback(run)
    during = [step for t, step in run.steps() if cut <= t <= healed]
    assert len(during) >= 2 and during[-1] > during[0], (during, run.output())  # it trained on env0 meanwhile
    assert f"actor 0 ({addresses[0]}): dropped" not in run.output()
    print(f"\npartition {healed - cut:.1f} s: dropped after {dropped - cut:.1f} s, rejoined {rejoined - healed:.2f} s "
          "after the link came back")


# ---------------------------------------------------------------------------------------------
# The learner SIGKILLed again and again.

KILLS = 20
CHECKPOINT_S = 1.0
# A checkpoint that started CHECKPOINT_S + SAVE_SLACK_S before a kill has been written: the
# checks run every 0.2 s, a save (and the learning curve redrawn after it) take a few tenths.
SAVE_SLACK_S = 1.0


def test_twenty_sigkills_of_the_learner_lose_at_most_one_checkpoint_interval(tmp_path, commands):
    # One pair of env servers throughout; the learner (same run) is killed 20 times: mostly at a
    # random moment up to 1.5 s into training, every fourth time at a random moment of its start
    # (imports, resume, cutting logs.csv back). Every restart that gets past its start must
    # resume from the newest checkpoint it was told of, and one no older than the steps reached
    # CHECKPOINT_S + SAVE_SLACK_S before any earlier kill.
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    servers = Command.module("torchbeast.polybeast_env", "--env", CUE, "--num_servers", 2, "--pipes_basename",
                             f"unix:{tmp_path}/env")
    commands.append(servers)
    addresses = [f"unix:{tmp_path}/env.{i}" for i in range(2)]
    run_dir = tmp_path / "kills"
    saved_re = re.compile(r"Saved checkpoint .* at step (\d+)")
    must_resume_from = 0  # the newest step a restart must resume from (or later)
    resumed_lives = 0
    for life in range(KILLS + 1):
        run = learner(commands, tmp_path, "kills", addresses, "--checkpoint_interval", CHECKPOINT_S,
                      "--total_steps", 100_000_000)
        if life == KILLS:  # the last one is stopped cleanly, and must have resumed like the others
            run.wait_for(r"^step +[1-9]", timeout=120)
            assert run.stop() == 128 + signal.SIGTERM, run.output()
        else:
            if life % 4 == 3:
                time.sleep(rng.uniform(0.5, 2.5))
            else:
                ready, _ = run.wait_for(r"Learning from 2 env server", timeout=120)
                time.sleep(max(0.0, ready + rng.uniform(0.0, 1.5) - time.monotonic()))
            run.send(signal.SIGKILL)
            assert run.wait() == -signal.SIGKILL, run.output()
        killed = time.monotonic()
        output = run.output()
        context = f"seed {seed}, life {life}, must resume from step {must_resume_from}:\n{output}"
        assert "Traceback" not in output and "falling back" not in output, context
        resumed = re.search(r"Resuming .* from step (\d+)", output)
        if resumed is not None:
            resumed_lives += 1
            assert int(resumed.group(1)) >= must_resume_from, context
        elif "Learning from" in output:  # past its start without a checkpoint to resume
            assert must_resume_from == 0, context
        saved = [int(m.group(1)) for m in map(saved_re.search, output.splitlines()) if m]
        reached = [step for t, step in run.steps() if t <= killed - CHECKPOINT_S - SAVE_SLACK_S]
        must_resume_from = max([must_resume_from, *saved, *reached])
    assert resumed_lives >= KILLS // 2, f"seed {seed}: only {resumed_lives} restarts resumed a checkpoint"
    assert load_checkpoint(str(run_dir / "model.tar"))["step"] >= must_resume_from > 0
    steps = [int(row["step"]) for row in read_log(str(run_dir / "logs.csv"))]
    assert steps == sorted(set(steps)), steps  # cut back at every resume: never back, never repeated
    assert servers.stop() == 128 + signal.SIGTERM, servers.output()


# ---------------------------------------------------------------------------------------------
# Stop signals and SIGKILL: nothing left behind. (Ctrl-C to the group and SIGTERM to the parent
# alone are tests/test_stop_and_resume.py's and tests/test_polybeast.py's.)

@pytest.mark.parametrize("module, signum, group", [
    ("torchbeast.polybeast", signal.SIGINT, False),
    ("torchbeast.polybeast", signal.SIGTERM, True),
    ("torchbeast.polybeast", signal.SIGKILL, False),
    ("torchbeast.monobeast", signal.SIGKILL, False),
], ids=["polybeast-sigint-parent", "polybeast-sigterm-group", "polybeast-sigkill-parent", "monobeast-sigkill-parent"])
def test_a_signal_leaves_no_process_and_no_socket(tmp_path, commands, monkeypatch, module, signum, group):
    socket_tmp = tempfile.mkdtemp(prefix="pbc")  # the run's TMPDIR: its socket folder goes there
    monkeypatch.setitem(ENV, "TMPDIR", socket_tmp)
    try:
        workers = ["--num_servers", 1] if module == "torchbeast.polybeast" else ["--num_actors", 1]
        run = Command.module(module, "--env", CUE, *SMALL, *workers, "--total_steps", 100_000_000,
                             "--savedir", tmp_path, "--xpid", "sig")
        commands.append(run)
        run.wait_for(r"^step +[1-9]", timeout=120)
        if module == "torchbeast.polybeast":
            assert [n for n in os.listdir(socket_tmp) if n.startswith("polybeast-")]  # the check can fail
        run.send(signum, group=group)
        status = run.wait(timeout=60)
        assert status == (-signum if signum == signal.SIGKILL else 128 + signum), run.output()
        assert_no_process_left(run.pid)
        assert [n for n in os.listdir(socket_tmp) if n.startswith("polybeast-")] == [], os.listdir(socket_tmp)
        if signum != signal.SIGKILL:
            no_traceback(run)
            assert load_checkpoint(str(tmp_path / "sig" / "model.tar"))["step"] > 0
    finally:
        shutil.rmtree(socket_tmp, ignore_errors=True)
