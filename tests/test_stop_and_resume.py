"""Stopping and resuming end to end, in subprocesses as a user runs them: exit statuses for
signals, a second signal during shutdown, how long stopping takes, flags that are not finite,
and a resume from a damaged run (fallback checkpoint, logs.csv cut back, leftovers removed)."""
import os
import signal
import time

import pytest
from cli import assert_no_process_left, finish, run_module, start_until_first_progress_line

from torchbeast.core.checkpoint import load_checkpoint
from torchbeast.core.run_outputs import read_log

CUE = "torchbeast:CueMemory-v0"
TINY = ["--env", CUE, "--encoder", "small", "--hidden_size", "16", "--batch_size", "4", "--unroll_length", "10",
        "--log_interval", "1"]
STOP_WITHIN_S = 5.0  # measured ~0.7 s on a busy 2-core host; 5-6 s before (actors and Python's teardown)


def start(tmp_path, xpid, module="torchbeast.monobeast"):
    workers = ["--num_actors", "2"] if module == "torchbeast.monobeast" else ["--num_servers", "2"]
    return start_until_first_progress_line(module, *TINY, *workers, "--total_steps", 100_000_000,
                                           "--savedir", tmp_path, "--xpid", xpid)


@pytest.mark.parametrize("signum,group,status", [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
                         ids=["ctrl-c", "kill"])
def test_a_signal_stops_the_run_within_seconds_with_its_exit_status(tmp_path, signum, group, status):
    proc, lines = start(tmp_path, "sig")
    started = time.monotonic()
    output = finish(proc, lines, lambda: (os.killpg if group else os.kill)(proc.pid, signum))
    stopped_in = time.monotonic() - started
    assert proc.returncode == status, output
    assert stopped_in < STOP_WITHIN_S, (stopped_in, output)
    assert "Traceback" not in output
    assert load_checkpoint(str(tmp_path / "sig" / "model.tar"))["step"] > 0
    assert_no_process_left(proc.pid)


def test_polybeast_stopped_by_sigterm_exits_143_with_a_checkpoint(tmp_path):
    # Stopping takes ~5 s until the env servers skip Python's teardown too (polybeast_env.serve).
    proc, lines = start(tmp_path, "sig", "torchbeast.polybeast")
    output = finish(proc, lines, lambda: os.kill(proc.pid, signal.SIGTERM))
    assert proc.returncode == 143, output
    assert "Traceback" not in output
    assert load_checkpoint(str(tmp_path / "sig" / "model.tar"))["step"] > 0
    assert_no_process_left(proc.pid)


@pytest.mark.parametrize("module", ["torchbeast.monobeast", "torchbeast.polybeast"])
def test_more_signals_during_shutdown_lose_nothing(tmp_path, module):
    # A double Ctrl-C, then `timeout`'s SIGTERM to the process and to its group.
    proc, lines = start(tmp_path, "double", module)

    def signals():
        for send, signum in ((os.killpg, signal.SIGINT), (os.killpg, signal.SIGINT), (os.kill, signal.SIGTERM),
                             (os.killpg, signal.SIGTERM)):
            try:
                send(proc.pid, signum)
            except ProcessLookupError:
                break
            time.sleep(0.05)

    output = finish(proc, lines, signals)
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "terminate called" not in output
    assert "checkpoint saved" in output
    assert load_checkpoint(str(tmp_path / "double" / "model.tar"))["step"] > 0
    assert_no_process_left(proc.pid)


@pytest.mark.parametrize("module,args", [
    ("torchbeast.monobeast", ["--learning_rate", "nan"]),
    ("torchbeast.monobeast", ["--pos_noise", "nan"]),
    ("torchbeast.monobeast", ["--checkpoint_interval", "inf"]),
    ("torchbeast.monobeast", ["--discounting=-inf"]),
    ("torchbeast.polybeast", ["--log_interval", "NaN"]),
    ("torchbeast.polybeast_learner", ["--entropy_cost", "infinity"]),
    ("torchbeast.polybeast_env", ["--pos_noise=-nan"]),
])
def test_a_flag_that_is_not_finite_is_one_line_naming_it(tmp_path, module, args):
    proc = run_module(module, *args, "--savedir" if module != "torchbeast.polybeast_env" else "--num_servers",
                      tmp_path if module != "torchbeast.polybeast_env" else 1, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    flag = args[0].split("=")[0]
    assert proc.stderr.count("\n") == 1 and f"argument {flag}: expected a finite number" in proc.stderr, proc.stderr


def test_resume_of_a_damaged_run(tmp_path):
    common = [*TINY, "--num_actors", "2", "--savedir", tmp_path, "--xpid", "run", "--seed", "2"]
    run = tmp_path / "run"
    run_module("torchbeast.monobeast", *common, "--total_steps", 400)
    finished = run_module("torchbeast.monobeast", *common, "--total_steps", 400)  # already complete: exit 0
    assert "nothing to do" in finished.stderr
    run_module("torchbeast.monobeast", *common, "--total_steps", 800)
    previous_step = load_checkpoint(str(run / "model.prev.tar"))["step"]
    assert 400 <= previous_step < load_checkpoint(str(run / "model.tar"))["step"]
    assert "rng_states" in load_checkpoint(str(run / "model.tar"))

    # Damage it as a crash would: model.tar unreadable, rows logged after the checkpoint that
    # survives, a half-written row, a temporary file of a save that was killed.
    (run / "model.tar").write_bytes(b"\0" * 100)
    with open(run / "logs.csv", "a") as f:
        f.write("999999,1.0,5\n12")
    (run / ".tmp-killed.tar").write_bytes(b"half")
    resumed = run_module("torchbeast.monobeast", *common, "--total_steps", 1200)
    assert "falling back to the previous checkpoint" in resumed.stderr
    assert f"from step {previous_step}" in resumed.stderr
    assert not (run / ".tmp-killed.tar").exists()
    steps = [int(row["step"]) for row in read_log(str(run / "logs.csv"))]
    assert steps == sorted(set(steps)), steps  # never back, never repeated
    assert steps[-1] >= 1200 and previous_step in steps and 999999 not in steps
    assert load_checkpoint(str(run / "model.tar"))["step"] >= 1200
