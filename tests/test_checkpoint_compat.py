"""Checkpoints written by earlier versions still resume and test.

tests/data/cue_memory_313556b.tar was written by commit 313556b (MonoBeast, CueMemory, 800 steps):
    python -m torchbeast.monobeast --env torchbeast:CueMemory-v0 --encoder small --hidden_size 16
        --batch_size 4 --unroll_length 10 --total_steps 800 --num_actors 1 --seed 1
"""
import json
import os
import shutil

import pytest
from cli import run_module

OLD_CHECKPOINT = os.path.join(os.path.dirname(__file__), "data", "cue_memory_313556b.tar")
FLAGS = ["--env", "torchbeast:CueMemory-v0", "--encoder", "small", "--hidden_size", "16", "--batch_size", "4",
         "--unroll_length", "10", "--seed", "1"]
TRAINER_FLAGS = {"torchbeast.monobeast": ["--num_actors", "1"], "torchbeast.polybeast": ["--num_servers", "1"]}


@pytest.mark.parametrize("trainer", ["torchbeast.monobeast", "torchbeast.polybeast"])
def test_an_old_checkpoint_resumes_and_tests(tmp_path, trainer):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    shutil.copy(OLD_CHECKPOINT, run_dir / "model.tar")
    flags = FLAGS + TRAINER_FLAGS[trainer]
    proc = run_module(trainer, *flags, "--total_steps", "1600", "--savedir", tmp_path, "--xpid", "old")
    assert "Resuming" in proc.stderr and "from step 800" in proc.stderr
    run_module(trainer, *flags, "--mode", "test", "--test_episodes", "2", "--savedir", tmp_path, "--xpid", "old")
    results = json.loads((run_dir / "test_results.json").read_text())
    assert results["episodes"] == 2 and results["trained_steps"] >= 1600


def test_resuming_on_another_env_is_refused_unless_allowed(tmp_path):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    shutil.copy(OLD_CHECKPOINT, run_dir / "model.tar")
    maze = ["--env", "memory_maze:MemoryMaze-9x9-v0"] + FLAGS[2:] + ["--num_actors", "1"]
    proc = run_module("torchbeast.monobeast", *maze, "--savedir", tmp_path, "--xpid", "old", check=False)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "trained on --env torchbeast:CueMemory-v0" in last and "--allow_env_mismatch" in last
    assert "Traceback" not in proc.stderr
