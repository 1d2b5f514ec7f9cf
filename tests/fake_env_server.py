"""A misbehaving env server for the fault tests: CueMemory going bad after a few steps of every
stream, or a counting env for the connection tests.

    python tests/fake_env_server.py ADDRESS KIND

Served by the real libtorchbeast.Server, from step BAD_FROM_STEP of every stream:
  shape       the frame becomes [3, 64, 65]
  dtype       the frame becomes uint16
  extra_key   the observation gains a key "extra"
  nan         the reward is NaN
  huge        the frame becomes 100 MB ([3, 5800, 5800] uint8: the right dtype, a huge shape)
  silent      the server stops answering
  counting    never goes bad: observation {"stream": int64, a number no other stream of any
              counting server shares, "t": int32, steps since the stream began}, for checking
              that no rollout mixes two streams
What no correct server can send, written as raw protobuf through grpcio (same service, same wire
format; the Step fields are encoded by hand below), from step BAD_FROM_STEP of every stream:
  byte_length the frame's data is one byte short of its shape
  overflow    the frame's shape is [3, 2**40, 2**40, 2**40]: its element count overflows int64
Prints "serving" once it listens; serves until SIGTERM.
"""
import os
import signal
import struct
import sys
import threading
import time
from concurrent import futures

import numpy as np

from torchbeast.core.episodes import EpisodeStream
from torchbeast.envs.cue_memory import CueMemoryEnv  # directly: torchbeast.core.environment imports torch (~1.5 s)

# Early enough that a bad stream completes no rollout (the tests unroll 10 steps or more): the
# actor pool's backoff, which starts over after a delivered rollout, grows at each retry.
BAD_FROM_STEP = 5
SERVER_KINDS = ("shape", "dtype", "extra_key", "nan", "huge", "silent", "counting")
WIRE_KINDS = ("byte_length", "overflow")
KINDS = SERVER_KINDS + WIRE_KINDS


class BadEnv:
    """CueMemory (Gymnasium API) whose steps go bad from BAD_FROM_STEP on."""

    def __init__(self, kind: str) -> None:
        self.env, self.kind, self.t = CueMemoryEnv(seed=0), kind, 0

    def reset(self, seed=None):
        return self.env.reset()

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        if self.t >= BAD_FROM_STEP:
            if self.kind == "shape":
                obs = dict(obs, frame=np.zeros((3, 64, 65), np.uint8))
            elif self.kind == "dtype":
                obs = dict(obs, frame=obs["frame"].astype(np.uint16))
            elif self.kind == "extra_key":
                obs = dict(obs, extra=np.zeros(1, np.float32))
            elif self.kind == "nan":
                reward = float("nan")
            elif self.kind == "huge":
                obs = dict(obs, frame=np.zeros((3, 5800, 5800), np.uint8))
            elif self.kind == "silent":
                time.sleep(3600)
        return obs, reward, terminated, truncated, info


class CountingEnv:
    """Endless episodes of 7 steps; each stream numbered apart from every other one."""

    streams = 0

    def __init__(self) -> None:
        CountingEnv.streams += 1
        self.stream = os.getpid() * 1000 + CountingEnv.streams  # a restarted server has a new pid
        self.t = 0

    def obs(self):
        return {"stream": np.int64(self.stream), "t": np.int32(self.t)}

    def reset(self, seed=None):
        return self.obs(), {}

    def step(self, action):
        self.t += 1
        return self.obs(), 1.0, False, self.t % 7 == 0, {}


def serve_with_libtorchbeast(address: str, kind: str) -> None:
    from libtorchbeast import Server

    server = Server(CountingEnv if kind == "counting" else (lambda: BadEnv(kind)), address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print("serving", flush=True)
    stop.wait()
    os._exit(0)  # at once: stop() would wait for a "silent" stream's handler, which sleeps on


# Protobuf wire format (libtorchbeast/rpcenv.proto), enough to write Step messages.
DTYPES = {np.dtype(name): number for number, name in enumerate(
    ["bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", "float32",
     "float64"])}


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s take ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # a length-delimited field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _ndarray(dtype: np.dtype, shape, data: bytes) -> bytes:
    return (_varint(1 << 3) + _varint(DTYPES[dtype]) + _field(2, b"".join(_varint(d) for d in shape))
            + _field(3, data))


def _nest(observation: dict, kind: str, bad: bool) -> bytes:
    """An ArrayNest holding a map of arrays; a bad one has the frame of `kind`."""
    entries = []
    for key in sorted(observation):
        array = np.ascontiguousarray(observation[key])
        shape, data = array.shape, array.tobytes()
        if bad and key == "frame":
            if kind == "byte_length":
                data = data[:-1]
            else:  # overflow
                shape = (3, 2**40, 2**40, 2**40)
        value = _field(1, _ndarray(array.dtype, shape, data))  # ArrayNest.array
        entries.append(_field(1, _field(1, key.encode()) + _field(2, value)))  # ArrayMap.items
    return _field(3, b"".join(entries))  # ArrayNest.map


def encode_step(record: dict, kind: str, bad: bool) -> bytes:
    out = _field(1, _nest(record["observation"], kind, bad))
    out += _varint(2 << 3 | 5) + struct.pack("<f", record["reward"])
    out += _varint(3 << 3) + _varint(int(record["done"]))
    out += _varint(4 << 3) + _varint(int(record["truncated"]))
    out += _varint(5 << 3) + _varint(record["episode_step"])
    out += _varint(6 << 3 | 5) + struct.pack("<f", record["episode_return"])
    if record["final_observation"] is not None:
        out += _field(7, _nest(record["final_observation"], kind, False))
    return out


def serve_raw(address: str, kind: str) -> None:
    """The StreamingEnv service through grpcio with bytes in and out: Actions are not decoded
    (CueMemory is stepped with action 0), Steps are written by encode_step."""
    import grpc

    def stream_env(actions, context):
        stream = EpisodeStream(CueMemoryEnv(seed=0))
        yield encode_step(stream.initial(), kind, bad=False)
        for t, _ in enumerate(actions, 1):
            yield encode_step(stream.step(np.int64(0)), kind, bad=t >= BAD_FROM_STEP)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.stream_stream_rpc_method_handler(stream_env)  # no (de)serializers: raw bytes
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "torchbeast.rpcenv.StreamingEnv", {"StreamingEnv": handler}),))
    server.add_insecure_port(address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print("serving", flush=True)
    stop.wait()
    os._exit(0)


def main() -> None:
    address, kind = sys.argv[1], sys.argv[2]
    if kind not in KINDS:
        sys.exit(f"fake_env_server.py: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    (serve_raw if kind in WIRE_KINDS else serve_with_libtorchbeast)(address, kind)


if __name__ == "__main__":
    main()
