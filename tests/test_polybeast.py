"""PolyBeast end to end, in subprocesses: gRPC env servers over unix sockets and TCP, the learner,
the one-machine launcher, test mode, bad input, and the CueMemory learning test."""
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from cli import (
    CUE_LEARNING_BAR,
    CUE_LEARNING_FLAGS,
    assert_no_process_left,
    interrupt_after_first_progress_line,
    kill_a_child_after_first_progress_line,
    learns_the_cue,
    run_module,
)
from ports import consecutive_free_ports

from torchbeast.core.checkpoint import load_checkpoint
from torchbeast.polybeast_learner import servers_reachable

CUE = "torchbeast:CueMemory-v0"
FAST = ["--encoder", "small", "--hidden_size", "32", "--unroll_length", "10", "--batch_size", "4",
        "--log_interval", "1"]


@pytest.fixture
def socket_tmpdir(monkeypatch):
    """A fresh TMPDIR for the commands the test runs (short: unix socket paths are limited), so
    their socket folders can be checked without seeing other runs'."""
    folder = tempfile.mkdtemp(prefix="pbt")
    monkeypatch.setenv("TMPDIR", folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def socket_folders(tmpdir):
    return [name for name in os.listdir(tmpdir) if name.startswith("polybeast-")]


def test_polybeast_over_unix_sockets_then_test_mode(tmp_path, socket_tmpdir):
    proc = run_module("torchbeast.polybeast", "--env", CUE, "--num_servers", 2, "--total_steps", 3000,
                      "--savedir", tmp_path, "--xpid", "poly", "--seed", 2, *FAST)
    assert "Learning from 2 env server(s): unix:" in proc.stderr
    run = tmp_path / "poly"
    for name in ("logs.csv", "meta.json", "model.tar", "learning_curve.png"):
        assert (run / name).stat().st_size > 0, name
    with open(run / "logs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(r["mean_episode_return"] for r in rows)
    assert load_checkpoint(str(run / "model.tar"))["step"] >= 3000
    assert socket_folders(socket_tmpdir) == []  # no stale socket folders

    # Same checkpoint format as MonoBeast: test mode (and MonoBeast's) reads it.
    tested = run_module("torchbeast.polybeast_learner", "--mode", "test", "--env", CUE, "--savedir", tmp_path,
                        "--xpid", "poly", "--test_episodes", 5)
    assert "mean return over 5 episodes" in tested.stdout
    assert json.loads((run / "test_results.json").read_text())["episodes"] == 5


def test_env_servers_over_tcp_and_learner_resume(tmp_path):
    port = consecutive_free_ports(2)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    servers = subprocess.Popen([sys.executable, "-m", "torchbeast.polybeast_env", "--env", CUE, "--num_servers", "2",
                                "--bind", f"127.0.0.1:{port}", "--seed", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        addresses = [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]
        common = ["--env", CUE, "--env_servers", *addresses, "--savedir", tmp_path, "--xpid", "tcp", *FAST]
        run_module("torchbeast.polybeast_learner", *common, "--total_steps", 2000)
        resumed = run_module("torchbeast.polybeast_learner", *common, "--total_steps", 4000)
        assert "Resuming" in resumed.stderr
        assert load_checkpoint(str(tmp_path / "tcp" / "model.tar"))["step"] >= 4000
    finally:
        # SIGTERM, not SIGINT: a shell running the tests in the background makes its children ignore SIGINT.
        servers.send_signal(signal.SIGTERM)
        output, _ = servers.communicate(timeout=30)
    assert servers.returncode == 128 + signal.SIGTERM, output  # stopped by a signal: 143
    assert "Serving torchbeast:CueMemory-v0 on 127.0.0.1" in output


@pytest.mark.parametrize("module,args,needle", [
    ("torchbeast.polybeast_learner", ["--env_servers", "nowhere"], "expected unix:/path or host:port"),
    ("torchbeast.polybeast_learner", ["--num_inference_threads", "0"], "--num_inference_threads must be positive"),
    ("torchbeast.polybeast_learner", ["--inference_device", "gpu9"], "--inference_device"),
    ("torchbeast.polybeast_env", ["--bind", "localhost"], "--bind localhost"),
    ("torchbeast.polybeast_env", ["--pipes_basename", "/tmp/x"], "expected unix:/path/prefix"),
    ("torchbeast.polybeast_env", ["--env", "memory_maze:MemoryMaze-8x8-v0"], "unknown Memory Maze env id"),
    ("torchbeast.polybeast", ["--env", CUE, "--env_servers", "unix:/tmp/a"], "starts its own servers"),
    ("torchbeast.polybeast_learner", ["--env_servers", "127.0.0.1:99999"], "port 99999 is not between 1 and 65535"),
    ("torchbeast.polybeast_learner", ["--env_timeout_s", "nan"], "--env_timeout_s"),
    ("torchbeast.polybeast_learner", ["--connect_timeout_s", "0"], "--connect_timeout_s must be a positive number"),
    ("torchbeast.polybeast_env", ["--max_streams", "0"], "--max_streams must be positive"),
])
def test_bad_input_is_one_clear_line(tmp_path, module, args, needle):
    if module != "torchbeast.polybeast_env":  # the trainers also take an env and write outputs
        args = [*([] if "--env" in args else ["--env", CUE]), *args, "--savedir", tmp_path]
    proc = run_module(module, *args, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_polybeast_on_real_memory_maze(tmp_path):
    proc = run_module("torchbeast.polybeast", "--env", "memory_maze:MemoryMaze-9x9-ExtraObs-v0", "--posemb", "noisygt",
                      "--pos_noise", "0.2", "--num_servers", 2, "--total_steps", 1200, "--savedir", tmp_path,
                      "--xpid", "maze", "--seed", 4, *FAST)
    assert "Traceback" not in proc.stderr
    state = load_checkpoint(str(tmp_path / "maze" / "model.tar"))
    assert state["step"] >= 1200 and state["model_config"]["posemb"] == "noisygt"


LEARN = [*CUE_LEARNING_FLAGS, "--num_servers", "2", "--learning_rate", "0.002"]


@pytest.mark.slow
def test_polybeast_learns_to_remember_the_cue(tmp_path):
    # As MonoBeast's learning test, with the same bar and the same two-seed rule.
    def trained_test_return(seed):
        xpid = f"learn{seed}"
        run_module("torchbeast.polybeast", *LEARN, "--seed", seed, "--savedir", tmp_path, "--xpid", xpid)
        run_module("torchbeast.polybeast_learner", "--mode", "test", "--env", CUE, "--savedir", tmp_path,
                   "--xpid", xpid, "--test_episodes", 100, "--seed", 7)
        return json.loads((tmp_path / xpid / "test_results.json").read_text())["mean_return"]

    returns = learns_the_cue(trained_test_return)
    assert max(returns) > CUE_LEARNING_BAR, returns


def test_interrupt_stops_everything_and_saves(tmp_path):
    proc, output = interrupt_after_first_progress_line(
        "torchbeast.polybeast", "--env", CUE, "--num_servers", 2, "--total_steps", 100_000_000,
        "--savedir", tmp_path, "--xpid", "int", *FAST)
    assert proc.returncode == 128 + signal.SIGINT, output  # stopped by a signal: 130
    assert load_checkpoint(str(tmp_path / "int" / "model.tar"))["step"] > 0
    assert_no_process_left(proc.pid)


def test_a_killed_env_server_stops_the_run_with_one_line_naming_it(tmp_path, socket_tmpdir):
    proc, output, _ = kill_a_child_after_first_progress_line(
        "torchbeast.polybeast", "--env", CUE, "--num_servers", 2, "--total_steps", 100_000_000,
        "--savedir", tmp_path, "--xpid", "kill", *FAST)
    assert proc.returncode == 1, output
    last_line = output.rstrip().splitlines()[-1]
    assert re.fullmatch(r"polybeast: error: env server env-server-\d \(unix:/tmp/pbt\w+/polybeast-\w+/env\.\d\) "
                        r"exited with code -9 \(SIGKILL\)", last_line), output
    assert "Traceback" not in output
    assert load_checkpoint(str(tmp_path / "kill" / "model.tar"))["step"] > 0
    assert_no_process_left(proc.pid)
    assert socket_folders(socket_tmpdir) == []


def test_a_learner_that_reaches_no_server_exits_2_naming_the_addresses(tmp_path):
    addresses = [f"unix:{tmp_path}/nobody", f"127.0.0.1:{consecutive_free_ports(2)}"]
    start = time.monotonic()
    proc = run_module("torchbeast.polybeast_learner", "--env", CUE, "--env_servers", *addresses,
                      "--connect_timeout_s", 2, "--savedir", tmp_path, "--xpid", "alone", *FAST,
                      check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last_line = proc.stderr.rstrip().splitlines()[-1]
    assert last_line.startswith("polybeast_learner: error: no env server reachable for 2 s "
                                "(--connect_timeout_s 2); tried " + ", ".join(addresses)), proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start < 100


# Bad env servers (every kind of bad input, one learner): tests/test_chaos.py.


def test_a_served_address_is_refused(tmp_path):
    # A regular file where the socket would go is left alone.
    (tmp_path / "file.0").write_text("precious")
    proc = run_module("torchbeast.polybeast_env", "--env", CUE, "--num_servers", 1,
                      "--pipes_basename", f"unix:{tmp_path}/file", check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"unix:{tmp_path}/file.0: {tmp_path}/file.0 exists and is not a socket" in proc.stderr
    assert (tmp_path / "file.0").read_text() == "precious"
    # A socket somebody accepts on, and a TCP port somebody listens on.
    with socket.socket(socket.AF_UNIX) as live, socket.socket() as tcp:
        live.bind(f"{tmp_path}/live.0")
        live.listen()
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        port = tcp.getsockname()[1]
        for args, needle in [(["--pipes_basename", f"unix:{tmp_path}/live"],
                              f"unix:{tmp_path}/live.0: another server is listening on this socket"),
                             (["--bind", f"127.0.0.1:{port}"], f"127.0.0.1:{port}: already served")]:
            proc = run_module("torchbeast.polybeast_env", "--env", CUE, "--num_servers", 1, *args,
                              check=False, timeout=60)
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.rstrip().splitlines()[-1] == f"polybeast_env: error: {needle}" or needle in proc.stderr
            assert "Traceback" not in proc.stderr
        assert os.path.exists(f"{tmp_path}/live.0")
    # A stale socket (nobody accepts on it) is replaced.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(f"{tmp_path}/stale.0")
    stale.close()
    servers = subprocess.Popen([sys.executable, "-m", "torchbeast.polybeast_env", "--env", CUE, "--num_servers", "1",
                                "--pipes_basename", f"unix:{tmp_path}/stale"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(f"{tmp_path}/stale.0")
                    break
                except (ConnectionRefusedError, FileNotFoundError):
                    time.sleep(0.2)
        else:
            raise AssertionError("the server did not take over the stale socket")
    finally:
        servers.send_signal(signal.SIGTERM)
        output, _ = servers.communicate(timeout=30)
    assert servers.returncode == 128 + signal.SIGTERM, output


class FakePool:
    def __init__(self):
        self.entries = [dict(address="unix:/a", connected=False, seconds_since_last_step=None, last_problem=""),
                        dict(address="unix:/b", connected=False, seconds_since_last_step=None, last_problem="")]

    def status(self):
        return self.entries


def test_servers_reachable_counts_from_the_start_or_the_last_step():
    pool, now = FakePool(), [100.0]
    check = servers_reachable(pool, ["unix:/a", "unix:/b"], timeout_s=10, clock=lambda: now[0])
    now[0] = 109.0
    assert check() is None
    now[0] = 111.0
    reason = check()
    assert reason is not None and reason.config_error  # exit 2
    assert reason.detail == "no env server reachable for 11 s (--connect_timeout_s 10); tried unix:/a, unix:/b"
    pool.entries[1].update(connected=True, seconds_since_last_step=0.0)
    assert check() is None
    pool.entries[1].update(connected=False, seconds_since_last_step=5.0, last_problem="gone")
    assert check() is None  # the last step was 5 s ago
    pool.entries[1].update(seconds_since_last_step=12.0)
    assert check().detail.endswith("tried unix:/a, unix:/b (last problem: gone)")
