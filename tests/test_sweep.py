"""python -m torchbeast.sweep: grids, xpids, bad input, a tiny grid run here and rerun, the Slurm script."""
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from cli import run_module

from torchbeast import sweep
from torchbeast.core.checkpoint import load_checkpoint
from torchbeast.errors import ConfigError

CUE = "torchbeast:CueMemory-v0"
TINY = ["--env", CUE, "--encoder", "small", "--hidden_size", "16", "--num_actors", "2", "--batch_size", "4",
        "--unroll_length", "10", "--log_interval", "1"]


def test_grid_is_the_product_in_the_order_given():
    grid = sweep.parse_grid(["posemb=none,gt", "pos_noise=0,0.5", "seed=1"])
    points = sweep.grid_points(grid)
    assert len(points) == 4
    assert points[0] == {"posemb": "none", "pos_noise": "0", "seed": "1"}
    assert points[1] == {"posemb": "none", "pos_noise": "0.5", "seed": "1"}
    assert points[3] == {"posemb": "gt", "pos_noise": "0.5", "seed": "1"}
    assert sweep.point_args(points[3]) == ["--posemb", "gt", "--pos_noise", "0.5", "--seed", "1"]


def test_xpids_are_readable_safe_and_deterministic():
    assert sweep.xpid_for({"posemb": "gt", "pos_noise": "0.5", "seed": "1"}) == "posemb-gt_pos_noise-0.5_seed-1"
    env = sweep.xpid_for({"env": "memory_maze:MemoryMaze-9x9-ExtraObs-v0"}, prefix="abl_")
    assert env == "abl_env-memory_maze-MemoryMaze-9x9-ExtraObs-v0"
    long = {"env": "x" * 300, "seed": "1"}
    assert len(sweep.xpid_for(long)) <= 200 and sweep.xpid_for(long) == sweep.xpid_for(dict(long))
    assert sweep.xpid_for(long) != sweep.xpid_for({"env": "x" * 300, "seed": "2"})


@pytest.mark.parametrize("grid,common,needle", [
    (["seed"], [], "expected KEY=V1,V2"),
    (["=1,2"], [], "expected KEY=V1,V2"),
    (["seed=1,,2"], [], "empty value"),
    (["seed="], [], "empty value"),
    (["seed=1", "seed=2"], [], "twice"),
    (["bogus=1"], [], "not a monobeast flag"),
    (["no_lstm=1"], [], "takes no value"),
    (["xpid=a,b"], [], "sets --xpid itself"),
    (["seed=1,2"], ["--seed", "3"], "both a grid key"),
    (["seed=1"], ["--savedir", "x"], "sets it itself"),
    (["posemb=none,bogus"], [], "invalid choice"),
    (["num_actors=0"], [], "--num_actors must be positive"),
    (["seed=1"], ["--bogus"], "unrecognized arguments"),
])
def test_bad_grids_are_config_errors(tmp_path, grid, common, needle):
    with pytest.raises(ConfigError, match=needle):
        sweep.make_runs(sweep.parse_grid(grid), ["--env", CUE, *common], "monobeast", str(tmp_path))


def test_polybeast_flags_are_checked_against_polybeast():
    runs = sweep.make_runs(sweep.parse_grid(["num_servers=2,3"]), ["--env", CUE], "polybeast", "/tmp/x")
    assert [run.xpid for run in runs] == ["num_servers-2", "num_servers-3"]
    with pytest.raises(ConfigError, match="not a polybeast flag"):
        sweep.make_runs(sweep.parse_grid(["num_buffers=2"]), ["--env", CUE], "polybeast", "/tmp/x")


def test_bad_grid_exits_2_with_one_line(tmp_path):
    proc = run_module("torchbeast.sweep", "--savedir", tmp_path, "posemb=none,nope", "--", "--env", CUE,
                      check=False, timeout=120)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_grid_runs_here_and_a_rerun_skips_finished_runs(tmp_path):
    grid = ["seed=1,2", "posemb=gt", "--savedir", tmp_path, "--", *TINY]
    first = run_module("torchbeast.sweep", *grid, "--total_steps", "1000")
    runs = [tmp_path / "seed-1_posemb-gt", tmp_path / "seed-2_posemb-gt"]
    for run in runs:
        state = load_checkpoint(str(run / "model.tar"))
        assert state["step"] >= 1000 and state["flags"]["posemb"] == "gt"
    assert {load_checkpoint(str(run / "model.tar"))["flags"]["seed"] for run in runs} == {1, 2}
    assert "[2/2] seed-2_posemb-gt" in first.stdout and "2 trained, 0 finished before, 0 failed" in first.stdout

    logs = [os.path.getmtime(run / "logs.csv") for run in runs]
    again = run_module("torchbeast.sweep", *grid, "--total_steps", "1000")
    assert again.stdout.count("skipped") == 2 and "0 trained, 2 finished before" in again.stdout, again.stdout
    assert [os.path.getmtime(run / "logs.csv") for run in runs] == logs  # no trainer started

    # More steps: both are unfinished again, and resume under the same xpids.
    more = run_module("torchbeast.sweep", "--dry_run", *grid, "--total_steps", "2000")
    commands = [line for line in more.stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == 2 and all("--xpid seed-" in c and "--total_steps 2000" in c for c in commands)


def write_slurm(tmp_path, *extra):
    script = tmp_path / "sweep.sbatch"
    run_module("torchbeast.sweep", "--slurm", script, "--savedir", tmp_path / "runs", *extra,
               "posemb=none,gt", "pos_noise=0,0.5", "--", "--env", CUE, "--total_steps", "1000",
               "--hidden_size", "16", timeout=120)
    return script


def run_task(script, tmp_path, task_id):
    """Runs the array task `task_id` with a fake python that prints its arguments, one per line."""
    fake = tmp_path / "fake-python"
    fake.write_text('#!/bin/bash\nfor a in "$@"; do echo "ARG $a"; done\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(task_id), SLURM_ARRAY_JOB_ID="77", PYTHON=str(fake))
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30)
    return proc, [line[4:] for line in proc.stdout.splitlines() if line.startswith("ARG ")]


def test_slurm_script_is_valid_bash_and_each_task_runs_its_grid_point(tmp_path):
    script = write_slurm(tmp_path, "--sbatch", "time=2:00:00", "--sbatch", "partition=gpu", "--sbatch", "gres=")
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --array=0-3\n" in text and "#SBATCH --requeue\n" in text
    assert "#SBATCH --time=2:00:00\n" in text and "#SBATCH --partition=gpu\n" in text and "gres" not in text
    assert (tmp_path / "runs" / "slurm").is_dir()  # --output's folder, which Slurm does not create

    expected = sweep.grid_points(sweep.parse_grid(["posemb=none,gt", "pos_noise=0,0.5"]))
    for task_id, point in enumerate(expected):
        proc, args = run_task(script, tmp_path, task_id)
        assert proc.returncode == 0, proc.stderr
        assert args[:2] == ["-m", "torchbeast.monobeast"]
        flags = dict(zip(args[2::2], args[3::2]))
        assert flags["--posemb"] == point["posemb"] and flags["--pos_noise"] == point["pos_noise"]
        assert flags["--xpid"] == sweep.xpid_for(point)
        assert flags["--savedir"] == str(tmp_path / "runs") and flags["--total_steps"] == "1000"

    proc, args = run_task(script, tmp_path, 4)
    assert proc.returncode == 2 and not args and "no such grid point" in proc.stderr


def test_sigterm_to_the_sweep_reaches_the_run_and_stops_the_sweep(tmp_path):
    """`kill SWEEP_PID` (not the trainer's) passes SIGTERM on, waits for the run to save, and stops."""
    trainer = tmp_path / "trainer.py"
    trainer.write_text("import pathlib, signal, sys, time\n"
                       "def stop(*_):\n"
                       f"    pathlib.Path({str(tmp_path / 'saved')!r}).write_text('yes')\n"
                       "    sys.exit(130)\n"
                       "signal.signal(signal.SIGTERM, stop)\n"
                       f"pathlib.Path({str(tmp_path / 'started')!r}).write_text('yes')\n"
                       "time.sleep(60)\n")
    driver = ("import sys\nfrom torchbeast.core.cli import run_command\nfrom torchbeast.sweep import _run_to_end\n"
              f"sys.exit(run_command('sweep', lambda: _run_to_end([sys.executable, {str(trainer)!r}])))\n")
    proc = subprocess.Popen([sys.executable, "-c", driver], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in stderr
    assert (tmp_path / "saved").read_text() == "yes"
