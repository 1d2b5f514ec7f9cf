"""libtorchbeast.Server with Python envs, driven through libtorchbeast.Client."""

import threading

import numpy as np
import pytest
from ports import free_port

from libtorchbeast import _C, Client, EnvError, PeerError, RpcError, Server
from torchbeast.core.episodes import RECORD_KEYS


class CountingEnv:
    """Observation {"frame": uint8 [2, 3] = episode step}; reward 1 + action; ends after
    `length` steps (truncated if `truncate`); raises at step `fail_at` of an episode."""

    closed = 0

    def __init__(self, length=3, truncate=False, fail_at=None, bad_return=False):
        self.length, self.truncate, self.fail_at, self.bad_return = length, truncate, fail_at, bad_return
        self.t = 0

    def reset(self, seed=None):
        self.t = 0
        return {"frame": np.zeros((2, 3), np.uint8)}, {}

    def step(self, action):
        self.t += 1
        if self.t == self.fail_at:
            raise ValueError(f"env failed at step {self.t}")
        if self.bad_return:
            return {"frame": np.zeros((2, 3), np.uint8)}, 0.0, False, {}
        end = self.t >= self.length
        obs = {"frame": np.full((2, 3), self.t, np.uint8)}
        return obs, 1.0 + float(action), end and not self.truncate, end and self.truncate, {}

    def close(self):
        CountingEnv.closed += 1


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(factory, address=None, server_class=Server):
        server = server_class(factory, address or f"unix:{tmp_path}/env-{len(servers)}")
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def frame(step):
    return int(step["observation"]["frame"][0, 0])


def test_episodes_over_a_unix_socket(serve):
    server = serve(lambda: CountingEnv(length=3))
    client = Client(server.address)
    first = client.connect()
    assert first["done"] and not first["truncated"] and first["episode_step"] == 0
    assert first["observation"]["frame"].shape == (2, 3)
    s1 = client.step(np.int64(0))
    assert (frame(s1), s1["reward"], s1["done"], s1["episode_step"]) == (1, 1.0, False, 1)
    client.step(np.int64(1))
    end = client.step(np.int64(0))
    assert end["done"] and not end["truncated"]
    assert end["episode_step"] == 3 and end["episode_return"] == 4.0  # The episode that ended.
    assert frame(end) == 0  # The next episode's first observation.
    after = client.step(np.int64(0))
    assert after["episode_step"] == 1 and after["episode_return"] == 1.0
    client.close()


def test_truncation_is_separate_from_termination(serve):
    server = serve(lambda: CountingEnv(length=2, truncate=True))
    client = Client(server.address)
    client.connect()
    client.step(0)
    end = client.step(0)
    assert end["done"] and end["truncated"]


def test_final_observation_comes_only_with_truncation(serve):
    client = Client(serve(lambda: CountingEnv(length=2, truncate=True)).address)
    steps = [client.connect()] + [client.step(0) for _ in range(6)]
    for t, step in enumerate(steps):
        if t > 0 and t % 2 == 0:
            assert step["truncated"] and frame(step) == 0
            np.testing.assert_array_equal(step["final_observation"]["frame"], np.full((2, 3), 2, np.uint8))
        else:
            assert not step["truncated"] and step["final_observation"] is None
    client.close()

    client = Client(serve(lambda: CountingEnv(length=2)).address)
    client.connect()
    client.step(0)
    end = client.step(0)
    assert end["done"] and not end["truncated"] and end["final_observation"] is None
    client.close()


def test_termination_wins_over_truncation(serve):
    class BothEnds(CountingEnv):
        def step(self, action):
            obs, reward, _, _, info = super().step(action)
            return obs, reward, True, True, info

    client = Client(serve(BothEnds).address)
    client.connect()
    end = client.step(0)
    assert end["done"] and not end["truncated"] and end["final_observation"] is None


@pytest.mark.parametrize("use_port_zero", [True, False])
def test_tcp(serve, use_port_zero):
    address = "127.0.0.1:0" if use_port_zero else f"127.0.0.1:{free_port()}"
    server = serve(CountingEnv, address)
    port = server.port if use_port_zero else int(address.rsplit(":", 1)[1])
    assert server.port == port
    client = Client(f"127.0.0.1:{port}")
    assert client.connect()["done"]
    assert frame(client.step(0)) == 1


def test_the_action_arrives_as_numpy(serve):
    seen = []

    class Recorder(CountingEnv):
        def step(self, action):
            seen.append(action)
            return super().step(0)

    client = Client(serve(Recorder).address)
    client.connect()
    client.step({"move": np.int64(4), "aim": np.ones(2, np.float32)})
    assert isinstance(seen[0]["move"], np.ndarray) and seen[0]["move"].shape == () and seen[0]["move"] == 4
    np.testing.assert_array_equal(seen[0]["aim"], [1.0, 1.0])


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: CountingEnv(fail_at=2), r"env.step\(\) raised ValueError: env failed at step 2"),
        (lambda: CountingEnv(bad_return=True), r"must return \(observation, reward, terminated, truncated, info\)"),
        (lambda: 1 / 0, r"env_factory\(\) raised ZeroDivisionError"),
    ],
)
def test_env_errors_reach_the_client(serve, factory, message):
    client = Client(serve(factory).address)
    with pytest.raises(EnvError, match=message):
        client.connect()
        client.step(0)
        client.step(0)


def test_bad_observation_dtype_is_an_env_error(serve):
    class Bad(CountingEnv):
        def reset(self, seed=None):
            return {"frame": np.array(["text"])}, {}

    with pytest.raises(EnvError, match=r"unsupported array dtype <U4 .* at \['frame'\]"):
        Client(serve(Bad).address).connect()


def test_an_env_error_ends_only_that_stream(serve):
    server = serve(lambda: CountingEnv(length=100, fail_at=2))
    a, b = Client(server.address), Client(server.address)
    a.connect()
    b.connect()
    a.step(0)
    with pytest.raises(EnvError):
        a.step(0)
    b.step(0)  # Its own env, still at step 1.


def test_envs_are_closed_when_streams_end(serve):
    server = serve(CountingEnv)
    before = CountingEnv.closed
    client = Client(server.address)
    client.connect()
    client.close()
    client.connect()  # A new stream, a new env.
    client.close()
    server.stop()
    assert CountingEnv.closed == before + 2


def test_no_server_is_a_connection_error(tmp_path):
    with pytest.raises(RpcError) as info:
        Client(f"unix:{tmp_path}/nobody").connect()
    assert isinstance(info.value, ConnectionError)


def test_run_returns_after_stop(tmp_path):
    server = Server(CountingEnv, f"unix:{tmp_path}/env")
    runner = threading.Thread(target=server.run)
    runner.start()
    client = Client(server.address)
    for _ in range(100):
        try:
            client.connect()
            break
        except RpcError:
            threading.Event().wait(0.02)
    client.step(0)
    server.stop()
    runner.join(timeout=10)
    assert not runner.is_alive()
    with pytest.raises(RpcError):
        client.step(0)
    server.stop()  # Idempotent.


def test_bind_failure(tmp_path):
    with pytest.raises(RuntimeError, match="cannot listen"):
        Server(CountingEnv, f"unix:{tmp_path}/no/such/dir/env").run()


# The C++ server under libtorchbeast.Server: a transport of step records.


def record(frame_value, **fields):
    out = dict(observation={"frame": np.full((2, 3), frame_value, np.uint8)}, reward=0.0, done=False,
               truncated=False, episode_step=0, episode_return=0.0, final_observation=None)
    out.update(fields)
    return out


class ScriptedStream:
    """Returns `records` in turn (the first from initial()), whatever the actions."""

    closed = 0

    def __init__(self, records):
        self.records = iter(records)

    def initial(self):
        return next(self.records)

    def step(self, action):
        return next(self.records)

    def close(self):
        ScriptedStream.closed += 1


def test_records_arrive_as_they_are(serve):
    records = [
        record(7, reward=0.5, episode_step=3, episode_return=1.5),  # A first record without done.
        record(1, reward=-2.25, episode_step=np.int64(4), episode_return=np.float32(-0.75), done=np.bool_(False)),
        record(0, reward=1, done=True, truncated=True, episode_step=5, episode_return=0.25,
               final_observation={"frame": np.full((2, 3), 9, np.uint8), "extra": np.ones(2)}),
        record(2, done=True, episode_step=-1, episode_return=1e6),
    ]
    before = ScriptedStream.closed
    server = serve(lambda: ScriptedStream(records), server_class=_C.Server)
    client = Client(server.address)
    received = [client.connect()] + [client.step(0) for _ in records[1:]]
    client.close()
    server.stop()
    for sent, got in zip(records, received):
        assert set(got) == set(RECORD_KEYS)
        np.testing.assert_array_equal(got["observation"]["frame"], sent["observation"]["frame"])
        for key in ["reward", "done", "truncated", "episode_step", "episode_return"]:
            assert got[key] == sent[key], key
        if sent["final_observation"] is None:
            assert got["final_observation"] is None
        else:
            assert set(got["final_observation"]) == {"frame", "extra"}
            np.testing.assert_array_equal(got["final_observation"]["frame"], sent["final_observation"]["frame"])
            np.testing.assert_array_equal(got["final_observation"]["extra"], [1.0, 1.0])
    assert ScriptedStream.closed == before + 1


def without(key):
    bad = record(0)
    del bad[key]
    return bad


@pytest.mark.parametrize(
    "bad, message",
    [
        ([1, 2], r"expected a dict, got \[1, 2\]"),
        (without("reward"), "no 'reward'"),
        (without("final_observation"), "no 'final_observation'"),
        (dict(record(0), info={}), "unexpected key 'info'"),
        (record(0, reward="1.0"), "'reward' must be a real number, got str"),
        (record(0, reward=True), "'reward' must be a real number, got bool"),
        (record(0, done=1), "'done' must be a bool, got int"),
        (record(0, truncated=None), "'truncated' must be a bool, got NoneType"),
        (record(0, episode_step=1.0), "'episode_step' must be an int, got float"),
        (record(0, episode_step=2**31), "'episode_step' does not fit int32: 2147483648"),
        (record(0, episode_return=[1.0]), "'episode_return' must be a real number, got list"),
        (record(0, observation=np.array(["text"])), r"'observation': unsupported array dtype <U4"),
        (record(0, final_observation=record(1)["observation"]), "'final_observation' must be None unless 'truncated'"),
        (record(0, done=True, truncated=True), "'truncated' is True but 'final_observation' is None"),
        (record(0, truncated=True, final_observation=record(1)["observation"]),
         "'truncated' is True but 'done' is False"),
    ],
)
def test_bad_records_are_env_errors(serve, bad, message):
    client = Client(serve(lambda: ScriptedStream([record(0), bad]), server_class=_C.Server).address)
    client.connect()
    with pytest.raises(EnvError, match=r"stream\.step\(\) returned a bad record: " + message):
        client.step(0)


def test_stream_errors_name_the_call_unless_they_are_env_errors(serve):
    class Failing(ScriptedStream):
        def step(self, action):
            if action == 1:
                raise EnvError("worded by the stream")
            raise KeyError("missing")

    client = Client(serve(lambda: Failing([record(0)]), server_class=_C.Server).address)
    client.connect()
    with pytest.raises(EnvError, match=r"^stream\.step\(\) raised KeyError: 'missing'"):
        client.step(0)
    client.connect()
    with pytest.raises(EnvError, match=r"^worded by the stream \(env server "):
        client.step(1)
    with pytest.raises(EnvError, match=r"stream_factory\(\) raised ZeroDivisionError"):
        Client(serve(lambda: 1 / 0, server_class=_C.Server).address).connect()


def test_max_streams_refuses_a_further_stream_before_making_an_env(serve):
    made = []

    def factory():
        made.append(1)
        return CountingEnv(length=100)

    server = Server(factory, serve(lambda: CountingEnv()).address + "-limited", max_streams=1)
    server.start()
    try:
        first = Client(server.address)
        first.connect()
        with pytest.raises(PeerError, match=r"serves at most 1 stream\(s\) at a time"):
            Client(server.address).connect()
        assert len(made) == 1
    finally:
        server.stop()


def test_a_served_tcp_port_cannot_be_served_twice(serve):
    first = serve(CountingEnv, address="127.0.0.1:0")
    second = Server(CountingEnv, f"127.0.0.1:{first.port}")
    with pytest.raises(RuntimeError, match="cannot listen"):
        second.start()
    second.stop()
