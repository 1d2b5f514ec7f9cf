"""End to end: Python envs behind real gRPC servers, an ActorPool, a DynamicBatcher answered by
a trivial "model" in a Python thread, and a BatchingQueue of rollouts."""

import collections
import threading
import time

import numpy as np
import pytest
from ports import free_port

from libtorchbeast import ROLLOUT_STEP_KEYS, STEP_INPUT_KEYS, ActorPool, BatchingQueue, DynamicBatcher, EnvError, Server

UNROLL = 5
EPISODE = 7


class ToyEnv:
    """Observation {"frame": uint8 [3, 2] = step in episode, "id": int32 [] = server id}."""

    def __init__(self, env_id, fail_at=None):
        self.env_id, self.fail_at, self.t, self.total = env_id, fail_at, 0, 0

    def obs(self):
        return {"frame": np.full((3, 2), self.t, np.uint8), "id": np.int32(self.env_id)}

    def reset(self):
        self.t = 0
        return self.obs(), {}

    def step(self, action):
        assert action.shape == () and action.dtype == np.int64
        self.t += 1
        self.total += 1
        if self.total == self.fail_at:
            raise RuntimeError("toy env exploded")
        return self.obs(), float(action), False, self.t >= EPISODE, {}


def model_thread(batcher, hidden=4):
    """Action = 1, baseline = episode_step, truncation_value = the frame value of
    final_observation, agent_state = agent_state + 1."""

    def loop():
        for batch in batcher:
            x = batch.get_inputs()
            b = x["reward"].shape[1]
            batch.set_outputs({
                "action": np.ones((1, b), np.int64),
                "baseline": x["episode_step"].astype(np.float32),
                "truncation_value": x["final_observation"]["frame"][:, :, 0, 0].astype(np.float32),
                "policy_logits": np.zeros((1, b, 6), np.float32),
                "agent_state": (x["agent_state"][0] + 1,),
            })

    thread = threading.Thread(target=loop)
    thread.start()
    return thread


class Harness:
    def __init__(self, addresses, batch_size=1, fail_at=None):
        self.learner_queue = BatchingQueue(batch_dim=1, minimum_batch_size=batch_size,
                                           maximum_batch_size=batch_size, maximum_queue_size=8)
        self.batcher = DynamicBatcher(batch_dim=1, minimum_batch_size=1, maximum_batch_size=8, timeout_ms=1)
        self.model = model_thread(self.batcher)
        self.pool = ActorPool(
            unroll_length=UNROLL,
            learner_queue=self.learner_queue,
            inference_batcher=self.batcher,
            env_server_addresses=addresses,
            initial_agent_state=(np.zeros((1, 1, 4), np.float32),),
        )
        self.error = None
        self.runner = threading.Thread(target=self._run)
        self.runner.start()

    def _run(self):
        try:
            self.pool.run()
        except Exception as e:  # noqa: BLE001 - checked by the tests
            self.error = e

    def close(self):
        self.learner_queue.close()
        self.batcher.close()
        self.runner.join(timeout=10)
        self.model.join(timeout=10)
        assert not self.runner.is_alive() and not self.model.is_alive()


def start_servers(addresses, fail_at=None):
    servers = []
    for i, address in enumerate(addresses):
        server = Server(lambda i=i: ToyEnv(i, fail_at), address)
        server.start()
        servers.append(server)
    return servers


def check_rollouts(items, batch_size):
    """Shapes, overlap by one, agent states and episode bookkeeping, per env id."""
    by_env = collections.defaultdict(list)
    for item in items:
        rollout = item["rollout"]
        assert rollout["observation"]["frame"].shape == (UNROLL + 1, batch_size, 3, 2)
        for key in ["reward", "done", "truncated", "episode_step", "episode_return", "last_action",
                    "action", "baseline", "truncation_value"]:
            assert rollout[key].shape == (UNROLL + 1, batch_size), key
        assert rollout["policy_logits"].shape == (UNROLL + 1, batch_size, 6)
        assert set(rollout) == set(ROLLOUT_STEP_KEYS) | {"action", "baseline", "truncation_value", "policy_logits"}
        assert rollout["done"].dtype == np.bool_ and rollout["episode_step"].dtype == np.int32
        assert item["initial_agent_state"][0].shape == (1, batch_size, 4)
        for b in range(batch_size):
            env_id = int(rollout["observation"]["id"][0, b])
            by_env[env_id].append((
                {k: v[:, b] for k, v in rollout.items() if k != "observation"},
                rollout["observation"]["frame"][:, b, 0, 0],
                float(item["initial_agent_state"][0][0, b, 0]),
            ))
    for rollouts in by_env.values():
        for k, (r, frames, state) in enumerate(rollouts):
            steps = k * UNROLL + np.arange(UNROLL + 1)  # Steps since the stream started.
            np.testing.assert_array_equal(frames, steps % EPISODE)
            np.testing.assert_array_equal(r["done"], steps % EPISODE == 0)
            np.testing.assert_array_equal(r["truncated"], (steps % EPISODE == 0) & (steps > 0))
            ended = steps % EPISODE == 0
            episode_step = np.where(ended, np.where(steps > 0, EPISODE, 0), steps % EPISODE)
            np.testing.assert_array_equal(r["episode_step"], episode_step)
            np.testing.assert_array_equal(r["last_action"], np.where(steps == 0, 0, 1))
            np.testing.assert_array_equal(r["baseline"], r["episode_step"])
            # Truncated steps: the model's value of the final observation (frame 7), zeros elsewhere.
            assert r["truncation_value"].dtype == np.float32
            np.testing.assert_array_equal(r["truncation_value"], np.where(r["truncated"], EPISODE, 0))
            assert state == k * UNROLL  # The state went up by one per step.
            if k > 0:  # Overlap by one step.
                previous = rollouts[k - 1]
                assert previous[1][-1] == frames[0]
                for key, value in r.items():
                    np.testing.assert_array_equal(previous[0][key][-1], value[0], err_msg=key)
    return by_env


@pytest.mark.parametrize("batch_size", [1, 2])
def test_end_to_end_over_unix_sockets(tmp_path, batch_size):
    addresses = [f"unix:{tmp_path}/env-{i}" for i in range(3)]
    servers = start_servers(addresses)
    harness = Harness(addresses, batch_size=batch_size)
    items = [harness.learner_queue.dequeue_many() for _ in range(12)]
    harness.close()
    for server in servers:
        server.stop()
    assert harness.error is None
    by_env = check_rollouts(items, batch_size)
    assert len(by_env) >= 2
    # Each rollout adds UNROLL steps; actors may have stepped a little further.
    assert harness.pool.count() >= 12 * batch_size * UNROLL


def test_end_to_end_over_tcp():
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    servers = start_servers(addresses)
    harness = Harness(addresses)
    items = [harness.learner_queue.dequeue_many() for _ in range(8)]
    harness.close()
    for server in servers:
        server.stop()
    assert harness.error is None
    check_rollouts(items, batch_size=1)
    assert harness.pool.count() >= 8 * UNROLL


def test_env_error_is_raised_by_run(tmp_path):
    addresses = [f"unix:{tmp_path}/env"]
    servers = start_servers(addresses, fail_at=3)
    harness = Harness(addresses)
    harness.runner.join(timeout=10)
    assert isinstance(harness.error, EnvError)
    assert "toy env exploded" in str(harness.error)
    harness.close()
    servers[0].stop()


def test_survives_a_server_that_goes_away(tmp_path):
    addresses = [f"unix:{tmp_path}/env-{i}" for i in range(2)]
    servers = start_servers(addresses)
    harness = Harness(addresses)

    def next_ids(n):
        return [int(harness.learner_queue.dequeue_many()["rollout"]["observation"]["id"][0, 0]) for _ in range(n)]

    assert 0 in next_ids(10)
    servers[0].stop()
    assert next_ids(30).count(1) >= 25  # Actor 1 goes on (a few of actor 0's rollouts may be queued).
    servers[0] = Server(lambda: ToyEnv(0), addresses[0])
    servers[0].start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and 0 not in next_ids(1):
        pass
    assert time.monotonic() < deadline, "actor 0 did not reconnect"
    harness.close()
    for server in servers:
        server.stop()
    assert harness.error is None


@pytest.mark.parametrize("name", ["reward", "final_observation"])
def test_bad_model_outputs_are_raised_by_run(tmp_path, name):
    addresses = [f"unix:{tmp_path}/env"]
    servers = start_servers(addresses)
    queue = BatchingQueue(batch_dim=1)
    batcher = DynamicBatcher(batch_dim=1)

    def model():
        for batch in batcher:
            batch.set_outputs({name: batch.get_inputs()["reward"], "action": batch.get_inputs()["last_action"]})

    thread = threading.Thread(target=model)
    thread.start()
    pool = ActorPool(unroll_length=2, learner_queue=queue, inference_batcher=batcher,
                     env_server_addresses=addresses)
    with pytest.raises(ValueError, match=f"'{name}' has the name of an actor input"):
        pool.run()
    batcher.close()
    thread.join(timeout=5)
    servers[0].stop()


K = 3  # Episode length of TimeLimitEnv.


class TimeLimitEnv:
    """Observation {"t": int32 step in episode, "total": int32 steps since reset of the stream,
    "id": int32 env id}; reward = action; truncated every K steps."""

    def __init__(self, env_id):
        self.env_id, self.t, self.total = env_id, 0, 0

    def obs(self):
        return {"t": np.int32(self.t), "total": np.int32(self.total), "id": np.int32(self.env_id)}

    def reset(self):
        self.t = 0
        return self.obs(), {}

    def step(self, action):
        self.t += 1
        self.total += 1
        return self.obs(), float(action), False, self.t == K, {}


def value_model_thread(batcher, calls):
    """action = t + 1, baseline = 10 * t + total of the observation, truncation_value = the same of
    final_observation (0 for zeros), state + 1. Appends each caller's inputs to `calls`."""

    def loop():
        for batch in batcher:
            x = batch.get_inputs()
            obs, final = x["observation"], x["final_observation"]
            for b in range(x["reward"].shape[1]):
                calls.append({"keys": set(x), "truncated": x["truncated"][0, b], "total": obs["total"][0, b],
                              "id": obs["id"][0, b], "final": {k: v[0, b] for k, v in final.items()},
                              "final_dtypes": {k: v.dtype for k, v in final.items()}})
            batch.set_outputs({
                "action": (obs["t"] + 1).astype(np.int64),
                "baseline": (10 * obs["t"] + obs["total"]).astype(np.float32),
                "truncation_value": (10 * final["t"] + final["total"]).astype(np.float32),
                "agent_state": (x["agent_state"][0] + 1,),
            })

    thread = threading.Thread(target=loop)
    thread.start()
    return thread


def run_time_limit_envs(tmp_path, num_items):
    """Rollouts from two TimeLimitEnv servers, and the inputs of every model call."""
    addresses = [f"unix:{tmp_path}/env-{i}" for i in range(2)]
    servers = [Server(lambda i=i: TimeLimitEnv(i), address) for i, address in enumerate(addresses)]
    for server in servers:
        server.start()
    queue = BatchingQueue(batch_dim=1, minimum_batch_size=1, maximum_batch_size=1, maximum_queue_size=8)
    batcher = DynamicBatcher(batch_dim=1, maximum_batch_size=4, timeout_ms=1)
    calls = []
    model = value_model_thread(batcher, calls)
    pool = ActorPool(unroll_length=UNROLL, learner_queue=queue, inference_batcher=batcher,
                     env_server_addresses=addresses, initial_agent_state=(np.zeros((1, 1, 1), np.float32),))
    runner = threading.Thread(target=pool.run)
    runner.start()
    items = [queue.dequeue_many() for _ in range(num_items)]
    queue.close()
    batcher.close()
    runner.join(timeout=10)
    model.join(timeout=10)
    for server in servers:
        server.stop()
    return items, calls


def test_the_model_gets_the_final_observation_on_truncated_steps_and_zeros_otherwise(tmp_path):
    _, calls = run_time_limit_envs(tmp_path, num_items=6)
    assert sum(call["truncated"] for call in calls) >= 4
    for call in calls:
        assert call["keys"] == set(STEP_INPUT_KEYS)
        assert call["final_dtypes"] == {"t": np.int32, "total": np.int32, "id": np.int32}
        if call["truncated"]:  # The cut episode's last observation: t = K, the same total and id.
            assert call["final"] == {"t": K, "total": call["total"], "id": call["id"]}
        else:
            assert call["final"] == {"t": 0, "total": 0, "id": 0}


def test_rollouts_keep_the_truncation_value_beside_its_step(tmp_path):
    items, _ = run_time_limit_envs(tmp_path, num_items=10)
    rollouts_per_env = collections.Counter()
    truncated_steps = 0
    for item in items:
        r = item["rollout"]
        assert set(r) == set(ROLLOUT_STEP_KEYS) | {"action", "baseline", "truncation_value"}
        k = rollouts_per_env[int(r["observation"]["id"][0, 0])]
        rollouts_per_env[int(r["observation"]["id"][0, 0])] += 1
        total = r["observation"]["total"][:, 0]
        np.testing.assert_array_equal(total, k * UNROLL + np.arange(UNROLL + 1))
        cut = (total > 0) & (total % K == 0)
        np.testing.assert_array_equal(r["truncated"][:, 0], cut)
        assert r["truncation_value"].dtype == np.float32 and r["truncation_value"].shape == (UNROLL + 1, 1)
        # V(final observation) = 10 * K + total on cut steps; the step's own baseline stays V(reset obs).
        np.testing.assert_array_equal(r["truncation_value"][:, 0], np.where(cut, 10 * K + total, 0))
        np.testing.assert_array_equal(r["baseline"][:, 0], 10 * r["observation"]["t"][:, 0] + total)
        assert item["initial_agent_state"][0][0, 0, 0] == k * UNROLL  # One model call per step.
        truncated_steps += int(cut[1:].sum())
    assert truncated_steps >= 5


def test_the_key_constants():
    assert STEP_INPUT_KEYS == ("observation", "reward", "done", "truncated", "episode_step", "episode_return",
                               "last_action", "final_observation", "agent_state")
    assert ROLLOUT_STEP_KEYS == STEP_INPUT_KEYS[:7]


def test_stop_without_servers(tmp_path, capfd):
    address = f"unix:{tmp_path}/nobody"
    pool = ActorPool(unroll_length=2, learner_queue=BatchingQueue(), inference_batcher=DynamicBatcher(),
                     env_server_addresses=[address])
    threading.Timer(0.5, pool.stop).start()
    pool.run()  # Retries until stopped.
    assert pool.count() == 0
    log = capfd.readouterr().err
    assert log.count(f"actor 0: waiting for env server {address} (not reachable yet: ") == 1, log  # Not per retry.
    assert "reconnect" not in log


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"unroll_length": 0}, "unroll_length"),
        ({"env_server_addresses": [""]}, "an env server address is empty"),
        ({"initial_agent_state": np.zeros((1, 3))}, "size 1 at dim 1"),
        ({"initial_action": np.zeros(1)}, r"leading dims \[1, 1\]"),
    ],
)
def test_invalid_arguments(kwargs, message):
    args = dict(unroll_length=2, learner_queue=BatchingQueue(), inference_batcher=DynamicBatcher(),
                env_server_addresses=["unix:/nowhere"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ActorPool(**args)


class ShapeChangingEnv(ToyEnv):
    """A ToyEnv whose frame becomes [3, 3] from step `bad_from` on (or sleeps `delay` s then)."""

    def __init__(self, env_id, bad_from, delay=0.0):
        super().__init__(env_id)
        self.bad_from, self.delay = bad_from, delay

    def obs(self):
        obs = super().obs()
        if self.total >= self.bad_from:
            time.sleep(self.delay)
            if not self.delay:
                obs["frame"] = np.zeros((3, 3), np.uint8)
        return obs


SPEC = {"frame": np.zeros((3, 2), np.uint8), "id": np.int32(0)}


def run_beside_a_bad_server(tmp_path, capfd, bad_env, **pool_args):
    """A pool over a good ToyEnv server (id 0) and a bad one (id 1): returns (log, ids of the
    rollouts dequeued until the bad one was dropped, the pool's status then)."""
    addresses = [f"unix:{tmp_path}/good", f"unix:{tmp_path}/bad"]
    servers = [Server(lambda: ToyEnv(0), addresses[0]), Server(bad_env, addresses[1])]
    for server in servers:
        server.start()
    learner_queue = BatchingQueue(batch_dim=1, maximum_queue_size=8)
    batcher = DynamicBatcher(batch_dim=1, minimum_batch_size=1, maximum_batch_size=8, timeout_ms=1)
    model = model_thread(batcher)
    pool = ActorPool(unroll_length=UNROLL, learner_queue=learner_queue, inference_batcher=batcher,
                     env_server_addresses=addresses, initial_agent_state=(np.zeros((1, 1, 4), np.float32),),
                     **pool_args)
    errors = []
    runner = threading.Thread(target=lambda: errors.append(None) if pool.run() is None else None)
    runner.start()
    ids = []
    deadline = time.monotonic() + 20
    while (len(ids) < 20 or pool.status()[1]["drops"] == 0) and time.monotonic() < deadline:
        ids.append(int(learner_queue.dequeue_many()["rollout"]["observation"]["id"][0, 0]))
    status = pool.status()
    learner_queue.close()
    batcher.close()
    runner.join(timeout=10)
    model.join(timeout=10)
    for server in servers:
        server.stop()
    assert errors == [None], "run() raised or did not return"
    return capfd.readouterr().err, ids, status


def test_a_server_whose_shape_changes_is_dropped_and_the_others_go_on(tmp_path, capfd):
    log, ids, status = run_beside_a_bad_server(tmp_path, capfd, lambda: ShapeChangingEnv(1, bad_from=3),
                                               observation_spec=SPEC)
    assert f"actor 1 (unix:{tmp_path}/bad): dropped: observation 'frame' has shape [3, 3], expected [3, 2]" in log
    assert ids.count(0) >= 20 and 1 not in ids  # the bad stream never gets to a rollout
    assert status[1]["drops"] >= 1 and not status[1]["connected"] and status[1]["ever_connected"]
    assert "has shape [3, 3]" in status[1]["last_problem"]
    assert status[0]["connected"] and status[0]["drops"] == 0 and status[0]["seconds_since_last_step"] < 10


def test_a_silent_server_is_dropped_after_env_timeout_s(tmp_path, capfd):
    log, ids, status = run_beside_a_bad_server(tmp_path, capfd, lambda: ShapeChangingEnv(1, bad_from=3, delay=1.0),
                                               observation_spec=SPEC, env_timeout_s=0.2)
    assert f"actor 1 (unix:{tmp_path}/bad): dropped: sent no step within 0.2" in log
    assert status[1]["drops"] >= 1 and ids.count(0) >= 20


def test_status_before_run():
    pool = ActorPool(unroll_length=2, learner_queue=BatchingQueue(), inference_batcher=DynamicBatcher(),
                     env_server_addresses=["unix:/nowhere/a", "127.0.0.1:1"])
    assert pool.num_connected() == 0
    assert pool.status() == [
        dict(index=i, address=a, connected=False, ever_connected=False, seconds_since_last_step=None, drops=0,
             last_problem="", steps=0)
        for i, a in enumerate(["unix:/nowhere/a", "127.0.0.1:1"])]


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
def test_env_timeout_must_be_a_duration(timeout):
    with pytest.raises(ValueError, match="env_timeout_s"):
        ActorPool(unroll_length=2, learner_queue=BatchingQueue(), inference_batcher=DynamicBatcher(),
                  env_server_addresses=["unix:/nowhere"], env_timeout_s=timeout)
