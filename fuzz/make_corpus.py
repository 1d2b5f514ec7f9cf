"""Writes the seed corpus of the Step/Action fuzz target (fuzz/corpus/): small serialized
rpcenv.Step and rpcenv.Action messages, well-formed ones and ones that each break one rule.

    python fuzz/make_corpus.py            # rewrites fuzz/corpus/seed-*
    python fuzz/make_corpus.py --out DIR

The messages are encoded by hand (protobuf wire format) rather than with generated Python code,
so that malformed ones (truncated fields, out-of-range enums, unpacked shapes) can be written too.
Files named regression-* are inputs the fuzzer found; they are kept, never rewritten.
"""

from __future__ import annotations

import argparse
import math
import struct
from pathlib import Path

# Field numbers and dtypes of libtorchbeast/rpcenv.proto.
DTYPES = {
    "bool": (0, 1), "uint8": (1, 1), "int8": (2, 1), "int16": (3, 2), "uint16": (4, 2),
    "int32": (5, 4), "uint32": (6, 4), "int64": (7, 8), "uint64": (8, 8), "float16": (9, 2),
    "float32": (10, 4), "float64": (11, 8),
}  # fmt: skip


def varint(value: int) -> bytes:
    """A protobuf varint; negative int64/enum values take ten bytes, as protobuf writes them."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_float(number: int, value: float) -> bytes:
    return varint(number << 3 | 5) + struct.pack("<f", value)


def ndarray(dtype: str | int, shape: list[int], data: bytes | None = None, packed: bool = True) -> bytes:
    """An NDArray; `data` defaults to the right number of bytes for dtype and shape."""
    code, item = DTYPES[dtype] if isinstance(dtype, str) else (dtype, 1)
    if data is None:
        data = bytes((i * 7) % 256 for i in range(item * math.prod(shape)))
    out = field_varint(1, code) if code else b""
    if shape and packed:
        out += field_bytes(2, b"".join(varint(d) for d in shape))
    elif shape:
        out += b"".join(field_varint(2, d) for d in shape)
    return out + field_bytes(3, data) if data else out


def leaf(array: bytes) -> bytes:
    """An ArrayNest holding one array."""
    return field_bytes(1, array)


def nest_list(*items: bytes) -> bytes:
    return field_bytes(2, b"".join(field_bytes(1, item) for item in items))


def nest_map(items: dict[str, bytes] | list[tuple[str, bytes]]) -> bytes:
    pairs = items.items() if isinstance(items, dict) else items
    entries = b"".join(field_bytes(1, field_bytes(1, k.encode()) + field_bytes(2, v)) for k, v in pairs)
    return field_bytes(3, entries)


def step(
    observation: bytes | None,
    reward: float = 0.0,
    done: bool = False,
    truncated: bool = False,
    episode_step: int = 0,
    episode_return: float = 0.0,
    final_observation: bytes | None = None,
) -> bytes:
    out = field_bytes(1, observation) if observation is not None else b""
    if reward:
        out += field_float(2, reward)
    if done:
        out += field_varint(3, 1)
    if truncated:
        out += field_varint(4, 1)
    if episode_step:
        out += field_varint(5, episode_step)
    if episode_return:
        out += field_float(6, episode_return)
    if final_observation is not None:
        out += field_bytes(7, final_observation)
    return out


def action(nest: bytes | None) -> bytes:
    return field_bytes(1, nest) if nest is not None else b""


def deep_list(depth: int) -> bytes:
    nest = leaf(ndarray("uint8", [1]))
    for _ in range(depth):
        nest = nest_list(nest)
    return nest


def memory_maze_obs(image_shape: list[int] = [4, 4, 3]) -> bytes:  # noqa: B006 (never mutated)
    """A Memory Maze ExtraObs-like observation with a tiny image."""
    return nest_map({
        "image": leaf(ndarray("uint8", image_shape)),
        "agent_pos": leaf(ndarray("float64", [2])),
        "agent_dir": leaf(ndarray("float64", [2])),
        "target_color": leaf(ndarray("float32", [3])),
        "maze_layout": leaf(ndarray("uint8", [3, 3])),
    })  # fmt: skip


def seeds() -> dict[str, bytes]:
    big = 1 << 62
    obs = memory_maze_obs()
    return {
        # Well-formed steps and actions, as a real run sends them.
        "step-first": step(obs, done=True),
        "step-mid-episode": step(obs, reward=1.0, episode_step=17, episode_return=2.0),
        "step-truncated-final-observation": step(
            obs, done=True, truncated=True, episode_step=1000, episode_return=3.0, final_observation=obs
        ),
        "step-every-dtype-scalar": step(nest_list(*(leaf(ndarray(name, [])) for name in DTYPES))),
        "step-nested-list-in-map": step(nest_map({"a": nest_list(leaf(ndarray("int32", [2, 2])), nest_list())})),
        "step-empty-list": step(nest_list()),
        "step-empty-map": step(nest_map({})),
        "step-unpacked-shape": step(leaf(ndarray("int16", [2, 3], packed=False))),
        "step-duplicate-map-key-last-wins": step(nest_map([("k", leaf(ndarray("uint8", [1]))), ("k", nest_list())])),
        "step-zero-size-large-dims": step(leaf(ndarray("float64", [3, 0, 1 << 20]))),
        "step-deep-list-45": step(deep_list(45)),
        "action-discrete": action(leaf(ndarray("int64", []))),
        "action-batch": action(leaf(ndarray("int64", [1, 1]))),
        "action-map": action(nest_map({"move": leaf(ndarray("int64", [])), "look": leaf(ndarray("float32", [2]))})),
        # Each breaks one rule of the decoder or of the step check.
        "bad-no-observation": step(None, reward=1.0),
        "bad-oneof-unset": step(b""),
        "bad-dtype-12": step(leaf(ndarray(12, [2], data=b"ab"))),
        "bad-dtype-negative": step(leaf(ndarray(-1, [2], data=b"ab"))),
        "bad-negative-dim": step(leaf(ndarray("uint8", [-1, 2], data=b""))),
        "bad-bytes-short": step(leaf(ndarray("uint8", [2, 2], data=b"abc"))),
        "bad-bytes-long": step(leaf(ndarray("float32", [1], data=b"abcde"))),
        "bad-elements-overflow": step(leaf(ndarray("uint8", [1 << 32, 1 << 32, 4], data=b""))),
        "bad-elements-overflow-before-zero": step(leaf(ndarray("uint8", [big, big, 0], data=b""))),
        "bad-bytes-overflow": step(leaf(ndarray("float64", [1 << 61], data=b""))),
        "bad-zero-size-huge-dims": step(leaf(ndarray("float32", [0, big, big]))),
        "bad-zero-size-over-a-message": action(leaf(ndarray("float32", [0, 1 << 29]))),
        "bad-shape-int64-min": step(leaf(ndarray("uint8", [-(1 << 63)], data=b""))),
        "bad-nan-reward": step(obs, reward=math.nan),
        "bad-inf-episode-return": step(obs, episode_return=-math.inf),
        "bad-final-observation-shape": step(
            obs, done=True, truncated=True, final_observation=memory_maze_obs([4, 4, 4])
        ),
        "bad-final-observation-undecodable": step(obs, truncated=True, final_observation=b""),
        "bad-deep-list-60": step(deep_list(60)),
        "bad-truncated-message": step(obs, done=True)[:-5],
        "bad-action-unset": action(None) + field_varint(2, 1),
        "bad-action-bytes-mismatch": action(leaf(ndarray("int64", [], data=b"1234"))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "corpus")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("seed-*"):
        old.unlink()
    for name, data in seeds().items():
        (args.out / f"seed-{name}").write_bytes(data)
    print(f"wrote {len(seeds())} seeds to {args.out}")


if __name__ == "__main__":
    main()
