"""Benchmark of the `nest` module against pure-Python recursion, dm-tree and optree.

Times nest.map, nest.flatten and nest.pack_as (and each peer's equivalent) on two nests:
  rl    a rollout-like dict of 20 numpy arrays nested two deep (observations, agent outputs,
        environment outputs, an LSTM state tuple);
  wide  a dict of 100 lists of 10 small arrays: 1,000 leaves.

Run from the repository root, with `nest` importable (built by ./test.sh or `pip install -e .`):
    python benchmarks/bench_nest.py                 # writes benchmarks/results/bench_nest.json
    python benchmarks/bench_nest.py --quick         # fewer repeats, for a smoke test
    python benchmarks/bench_nest.py --out /tmp/bench_nest.json
dm-tree (`tree`) and optree are optional (`pip install .[bench]`); missing peers are skipped.
See benchmarks/README.md for what each number means.
"""

import argparse
import os
import platform
import timeit
from pathlib import Path

import numpy as np
from report import write_result

import nest

try:
    import tree as dm_tree
except ImportError:  # pragma: no cover - optional peer
    dm_tree = None
try:
    import optree
except ImportError:  # pragma: no cover - optional peer
    optree = None

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_nest.json"
OPS = ("map", "flatten", "pack_as")


# --- the nests ------------------------------------------------------------------------------


def rl_nest():
    """One learner batch as an actor would send it: 20 arrays, dicts two deep, a state tuple."""
    t, b = 81, 8  # unroll length + 1, batch size
    return {
        "obs": {
            "image": np.zeros((t, b, 3, 64, 64), np.uint8),
            "agent_pos": np.zeros((t, b, 2), np.float32),
            "agent_dir": np.zeros((t, b, 2), np.float32),
            "target_color": np.zeros((t, b, 3), np.float32),
            "target_pos": np.zeros((t, b, 2), np.float32),
            "target_vec": np.zeros((t, b, 2), np.float32),
            "targets_pos": np.zeros((t, b, 3, 2), np.float32),
            "targets_vec": np.zeros((t, b, 3, 2), np.float32),
            "maze_layout": np.zeros((t, b, 9, 9), np.uint8),
        },
        "env": {
            "reward": np.zeros((t, b), np.float32),
            "done": np.zeros((t, b), bool),
            "truncated": np.zeros((t, b), bool),
            "episode_return": np.zeros((t, b), np.float32),
            "episode_step": np.zeros((t, b), np.int32),
            "last_action": np.zeros((t, b), np.int64),
        },
        "agent": {
            "action": np.zeros((t, b), np.int64),
            "policy_logits": np.zeros((t, b, 6), np.float32),
            "baseline": np.zeros((t, b), np.float32),
        },
        "core_state": (np.zeros((1, b, 256), np.float32), np.zeros((1, b, 256), np.float32)),
    }


def wide_nest():
    """1,000 leaves: a dict of 100 lists of 10 arrays."""
    return {f"key{i:03d}": [np.zeros(1) for _ in range(10)] for i in range(100)}


# --- pure-Python recursion with nest's semantics --------------------------------------------


def py_map(f, n):
    if type(n) is dict:
        return {key: py_map(f, value) for key, value in n.items()}
    if type(n) is list:
        return [py_map(f, item) for item in n]
    if type(n) is tuple:
        return tuple(py_map(f, item) for item in n)
    return f(n)


def py_flatten(n, out=None):
    out = [] if out is None else out
    if type(n) is dict:
        for key in sorted(n):
            py_flatten(n[key], out)
    elif type(n) in (list, tuple):
        for item in n:
            py_flatten(item, out)
    else:
        out.append(n)
    return out


def py_pack_as(n, flat):
    it = iter(flat)

    def pack(node):
        if type(node) is dict:
            values = {key: pack(node[key]) for key in sorted(node)}
            return {key: values[key] for key in node}
        if type(node) is list:
            return [pack(item) for item in node]
        if type(node) is tuple:
            return tuple(pack(item) for item in node)
        return next(it)

    return pack(n)


# --- the contenders -------------------------------------------------------------------------


def identity(x):
    return x


def contenders(n):
    """{library: {op: zero-argument callable}} for nest `n`."""
    flat = nest.flatten(n)
    out = {
        "nest": {
            "map": lambda: nest.map(identity, n),
            "flatten": lambda: nest.flatten(n),
            "pack_as": lambda: nest.pack_as(n, flat),
        },
        "python": {
            "map": lambda: py_map(identity, n),
            "flatten": lambda: py_flatten(n),
            "pack_as": lambda: py_pack_as(n, flat),
        },
    }
    if dm_tree is not None:
        out["dm-tree"] = {
            "map": lambda: dm_tree.map_structure(identity, n),
            "flatten": lambda: dm_tree.flatten(n),
            "pack_as": lambda: dm_tree.unflatten_as(n, flat),
        }
    if optree is not None:
        spec = optree.tree_structure(n)  # optree packs with a precomputed spec
        out["optree"] = {
            "map": lambda: optree.tree_map(identity, n),
            "flatten": lambda: optree.tree_leaves(n),
            "pack_as": lambda: optree.tree_unflatten(spec, flat),
        }
    return out


def check_agreement(n, libs):
    """Every contender must compute the same thing before its time means anything."""
    expected = nest.flatten(n)
    for lib, ops in libs.items():
        for op, fn in ops.items():
            leaves = fn() if op == "flatten" else nest.flatten(fn())
            assert len(leaves) == len(expected) and all(a is b for a, b in zip(leaves, expected)), (lib, op)


def time_call(fn, repeat, min_seconds):
    """Best time per call in microseconds: `repeat` rounds of enough calls to last min_seconds."""
    timer = timeit.Timer(fn)
    number = 1
    while timer.timeit(number) < min_seconds:
        number *= 2
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def hardware():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    if dm_tree is not None:
        versions["dm-tree"] = getattr(dm_tree, "__version__", "?")
    if optree is not None:
        versions["optree"] = optree.__version__
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "versions": versions}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats (a smoke test)")
    args = parser.parse_args(argv)
    repeat, min_seconds = (3, 0.02) if args.quick else (7, 0.1)

    results = []
    for name, n in (("rl", rl_nest()), ("wide", wide_nest())):
        libs = contenders(n)
        check_agreement(n, libs)
        for op in OPS:
            times = {lib: time_call(ops[op], repeat, min_seconds) for lib, ops in libs.items()}
            ratios = {lib: t / times["nest"] for lib, t in times.items() if lib != "nest"}
            results.append(
                {"nest": name, "leaves": len(nest.flatten(n)), "op": op, "us_per_call": times, "peer_over_nest": ratios}
            )

    peers = [lib for lib in results[0]["us_per_call"] if lib != "nest"]
    header = f"{'nest':<6}{'op':<9}" + "".join(f"{lib + ' us':>12}" for lib in ["nest", *peers])
    header += "".join(f"{lib + '/nest':>14}" for lib in peers)
    print(header)
    for r in results:
        row = f"{r['nest']:<6}{r['op']:<9}" + "".join(f"{r['us_per_call'][lib]:>12.2f}" for lib in ["nest", *peers])
        row += "".join(f"{r['peer_over_nest'][lib]:>13.1f}x" for lib in peers)
        print(row)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "bench_nest", "hardware": hardware(), "repeat": repeat, "results": results}
    write_result(str(args.out), report)


if __name__ == "__main__":
    main()
