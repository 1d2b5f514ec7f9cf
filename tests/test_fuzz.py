"""The libFuzzer target over the decoding of Step and Action messages (fuzz/): builds it with
clang, ASan and UBSan into build/fuzz (incrementally), replays the seed corpus, and fuzzes for
TB_FUZZ_SECONDS seconds (default 60). Any crash, sanitizer report or broken invariant fails.

A failure names the input that crashed; to keep it as a regression case, copy it to
fuzz/corpus/regression-<what> and fix the C++ (see fuzz/README.md).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FUZZ_DIR = REPO / "fuzz"
CORPUS = FUZZ_DIR / "corpus"
BUILD = REPO / "build" / "fuzz"
FUZZER = BUILD / "step_action_fuzzer"
FUZZ_SECONDS = int(os.environ.get("TB_FUZZ_SECONDS", "60"))
ARTIFACT_PREFIXES = ("crash-", "leak-", "timeout-", "oom-", "slow-unit-")

# What the decoders or the step check say about each malformed seed (a substring of the report).
BAD_SEEDS = {
    "seed-bad-no-observation": "step: rejected: step does not decode: ArrayNest message without a value",
    "seed-bad-oneof-unset": "step: rejected: step does not decode: ArrayNest message without a value",
    "seed-bad-dtype-12": "rejected: step does not decode: NDArray with unknown dtype 12",
    "seed-bad-dtype-negative": "rejected: step does not decode: NDArray with unknown dtype -1",
    "seed-bad-negative-dim": "negative dimension in shape [-1, 2]",
    "seed-bad-bytes-short": "NDArray of dtype uint8 and shape [2, 2] needs 4 bytes, got 3",
    "seed-bad-bytes-long": "NDArray of dtype float32 and shape [1] needs 4 bytes, got 5",
    "seed-bad-elements-overflow": "has more elements than int64 can count",
    "seed-bad-elements-overflow-before-zero": "has more elements than int64 can count",
    "seed-bad-bytes-overflow": "has more bytes than int64 can count",
    "seed-bad-zero-size-huge-dims": "shape [0, 4611686018427387904, 4611686018427387904] is too big",
    "seed-bad-zero-size-over-a-message": "action: rejected: NDArray of dtype float32 and shape [0, 536870912] is too",
    "seed-bad-shape-int64-min": "negative dimension in shape [-9223372036854775808]",
    "seed-bad-nan-reward": "step: bad step: reward is nan",
    "seed-bad-inf-episode-return": "step: bad step: episode_return is -inf",
    "seed-bad-final-observation-shape": "bad step: final_observation 'image' has shape [4, 4, 4], expected [4, 4, 3]",
    "seed-bad-final-observation-undecodable": "step: rejected: step does not decode: ArrayNest message without a value",
    "seed-bad-deep-list-60": "step: does not parse | action: does not parse",
    "seed-bad-truncated-message": "step: does not parse | action: does not parse",
    "seed-bad-action-unset": "action: rejected: ArrayNest message without a value",
    "seed-bad-action-bytes-mismatch": "action: rejected: NDArray of dtype int64 and shape [] needs 8 bytes, got 4",
}


def _clang() -> str:
    for name in ("clang++-14", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(
        "no clang++ on PATH: the fuzz target needs clang with libFuzzer "
        "(Debian: apt-get install clang-14 libclang-rt-14-dev; ./test.sh installs them)"
    )


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


FUZZER_LAUNCHER = ["sh", "-c", '"$@"; exit $?', "sh"]  # A shell that forks the command, not execs it.


def _run_fuzzer(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs the fuzz target as the child of a small shell. Linux keeps a process's peak RSS across
    exec, so a target forked straight from pytest (gigabytes by then) starts with pytest's peak,
    and libFuzzer's -rss_limit_mb (2048 by default) reports an out-of-memory at its first check."""
    return _run([*FUZZER_LAUNCHER, *cmd], timeout, env)


@pytest.fixture(scope="module")
def fuzzer() -> Path:
    """The fuzz target, configured on first use and then rebuilt only where sources changed."""
    start = time.monotonic()
    if not (BUILD / "build.ninja").exists():
        configure = _run(
            ["cmake", "-S", str(FUZZ_DIR), "-B", str(BUILD), "-G", "Ninja", f"-DCMAKE_CXX_COMPILER={_clang()}"], 300
        )
        assert configure.returncode == 0, f"configuring fuzz/ failed:\n{configure.stdout}\n{configure.stderr}"
    build = _run(["cmake", "--build", str(BUILD), "--target", FUZZER.name], 1200)
    assert build.returncode == 0, f"building the fuzz target failed:\n{build.stdout[-6000:]}\n{build.stderr[-3000:]}"
    print(f"\n[fuzz] build: {time.monotonic() - start:.1f} s")
    return FUZZER


def _artifacts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(ARTIFACT_PREFIXES))


def _reports(output: str) -> dict[str, str]:
    """Input file name -> its '[tb-fuzz] step: ... | action: ...' line, from a replay's output."""
    reports: dict[str, str] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("Running: "):
            current = Path(line[len("Running: ") :]).name
        elif line.startswith("[tb-fuzz] ") and current is not None:
            reports[current] = line[len("[tb-fuzz] ") :]
            current = None
    return reports


def _load_make_corpus():
    spec = importlib.util.spec_from_file_location("make_corpus", FUZZ_DIR / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_seeds_are_what_make_corpus_writes(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(FUZZ_DIR / "make_corpus.py"), "--out", str(tmp_path)], capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    made = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in CORPUS.glob("seed-*")}
    assert sorted(made) == sorted(committed), "fuzz/corpus is out of date: run python fuzz/make_corpus.py"
    for name, data in made.items():
        assert committed[name] == data, f"{name} differs from what make_corpus.py writes"


def test_corpus_replays_without_crash_and_each_seed_is_taken_as_named(fuzzer: Path) -> None:
    inputs = sorted(CORPUS.iterdir())
    assert len(inputs) >= 30
    result = _run_fuzzer([str(fuzzer), *map(str, inputs)], 120, env={"TB_FUZZ_REPORT": "1"})
    assert result.returncode == 0, f"replaying the corpus crashed:\n{result.stderr[-6000:]}"
    reports = _reports(result.stderr)
    assert sorted(reports) == [p.name for p in inputs], "not every corpus file was replayed"
    for name, report in reports.items():
        if name.startswith("seed-step-"):
            assert report.startswith("step: ok |"), f"{name}: {report}"
        elif name.startswith("seed-action-"):
            assert report.endswith("| action: ok"), f"{name}: {report}"
        elif name.startswith("seed-bad-"):
            assert name in BAD_SEEDS, f"{name}: add what it should be rejected with to BAD_SEEDS"
            assert BAD_SEEDS[name] in report, f"{name}: {report}"
            if name.startswith("seed-bad-action-"):
                assert "action: ok" not in report, f"{name}: {report}"
            else:
                assert not report.startswith("step: ok"), f"{name}: {report}"
    assert set(BAD_SEEDS) <= set(reports), "a seed named in BAD_SEEDS is missing from fuzz/corpus"


def test_a_crash_in_the_target_fails_the_run(fuzzer: Path, tmp_path: Path) -> None:
    """The canary (TB_FUZZ_CANARY=1) aborts on one input: the run must fail and leave a crash file,
    which is what test_fuzzing_finds_no_crash looks for."""
    mc = _load_make_corpus()
    canary = tmp_path / "canary"
    canary.write_bytes(mc.step(mc.nest_map({"fuzz-canary": mc.leaf(mc.ndarray("uint8", [1]))})))
    clean = _run_fuzzer([str(fuzzer), str(canary)], 60, env={"TB_FUZZ_REPORT": "1"})
    assert clean.returncode == 0 and "step: ok" in clean.stderr, clean.stderr[-3000:]
    # A fuzzing run (not a replay, which writes no crash file) from a corpus holding the canary.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(canary, corpus)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    crashed = _run_fuzzer(
        [str(fuzzer), "-runs=100", f"-artifact_prefix={artifacts}/", str(corpus)], 60, env={"TB_FUZZ_CANARY": "1"}
    )
    assert crashed.returncode != 0
    assert "FUZZ_CHECK failed" in crashed.stderr and "canary" in crashed.stderr, crashed.stderr[-3000:]
    found = _artifacts(artifacts)
    assert [p.name.split("-")[0] for p in found] == ["crash"]
    assert found[0].read_bytes() == canary.read_bytes()


def test_fuzzing_finds_no_crash(fuzzer: Path, tmp_path: Path) -> None:
    """TB_FUZZ_SECONDS of fuzzing from the seed corpus, under ASan and UBSan."""
    found = tmp_path / "found"  # New inputs go here, not into the repository's corpus.
    found.mkdir()
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    cmd = [
        str(fuzzer),
        f"-max_total_time={FUZZ_SECONDS}",
        "-max_len=8192",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(found),
        str(CORPUS),
    ]
    start = time.monotonic()
    result = _run_fuzzer(cmd, FUZZ_SECONDS + 180)
    elapsed = time.monotonic() - start
    crashes = _artifacts(artifacts)
    kept = BUILD / "findings"  # Outlives tmp_path, for whoever reads the failure.
    for crash in crashes:
        kept.mkdir(exist_ok=True)
        shutil.copy(crash, kept)
    error = result.stderr.find("==ERROR")  # The report's head names what failed; stacks follow.
    tail = result.stderr[error : error + 6000] if error >= 0 else result.stderr[-6000:]
    assert result.returncode == 0 and not crashes, (
        f"the fuzzer failed (exit {result.returncode}) with {[str(kept / p.name) for p in crashes]}; keep the "
        f"input as fuzz/corpus/regression-<what> and fix the decoding:\n{tail}"
    )
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", result.stderr)
    assert runs is not None, tail
    assert int(runs.group(1)) > 0
    new = len(list(found.iterdir()))
    print(f"\n[fuzz] {FUZZ_SECONDS} s asked, {elapsed:.1f} s run: {int(runs.group(1))} executions, {new} new inputs")


def test_the_fuzzers_memory_limit_ignores_pytests_memory(fuzzer: Path, tmp_path: Path) -> None:
    """A parent holding more than the target's -rss_limit_mb must not make the target report an
    out-of-memory (see _run_fuzzer): run it for 3 s (the limit is checked each second) from a Python
    child that holds 1500 MB, with a 1000 MB limit (the target itself stays under 500 MB)."""
    script = (
        "import subprocess, sys\n"
        "held = bytearray(1500 * 1024 * 1024)\n"
        "for i in range(0, len(held), 4096): held[i] = 1\n"
        f"sys.exit(subprocess.run({FUZZER_LAUNCHER!r} + sys.argv[1:]).returncode)\n"
    )
    args = [str(fuzzer), "-max_total_time=3", "-rss_limit_mb=1000", str(tmp_path), str(CORPUS)]
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
