"""The seed's set-up, as written, gives a working install: torch first (as `conda install pytorch`
would put it there), then `pip install -r requirements.txt`, in a fresh venv, the C++ build included.

It builds the C++ core from scratch in a copy of the checkout (the repo's own build/ stays
untouched), so it takes minutes; marked slow.
"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH = "torch==2.13.0"  # what scripts/setup.sh installs when no torch is importable


def requirement_lines():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        return [line.split("#", 1)[0].strip() for line in f if line.split("#", 1)[0].strip()]


def test_requirements_install_the_project_and_leave_torch_alone():
    lines = requirement_lines()
    assert "-e ." in lines or "." in lines, lines
    assert not any(line.lower().startswith("torch") for line in lines), lines


def copy_checkout(dest):
    """The files git would ship (tracked, and new ones not ignored): no build/, no .venv."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def run(args, cwd, timeout):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    command = " ".join(map(str, args))
    assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.slow
def test_seed_setup_as_written_in_a_fresh_venv(tmp_path):
    checkout, venv = tmp_path / "checkout", tmp_path / "venv"
    copy_checkout(checkout)
    run([sys.executable, "-m", "venv", venv], tmp_path, 120)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", TORCH], tmp_path, 600)
    run([python, "-m", "pip", "install", "-q", "-r", "requirements.txt"], checkout, 1800)
    out = run([python, "-c", "import torch, torchbeast, libtorchbeast, nest, memory_maze; "
                             "print(torch.__version__); print(torchbeast.__file__)"], tmp_path, 120)
    torch_version, torchbeast_file = out.split()
    assert torch_version.startswith(TORCH.split("==")[1]), torch_version  # not re-pinned
    assert torchbeast_file.startswith(str(checkout)), torchbeast_file
    # The built modules work, not only import: a nest round trip and a CueMemory run's help.
    run([python, "-c", "import nest; assert nest.map(lambda x: x + 1, {'a': [1, 2]}) == {'a': [2, 3]}"],
        tmp_path, 60)
    run([python, "-m", "torchbeast.polybeast_env", "--help"], tmp_path, 120)
    # The default (native) Memory Maze step works from an isolated build: its module found the
    # libmujoco that Python loads, not the build environment's copy that pip deleted.
    run([python, "-c", "from torchbeast.envs import make_env; env = make_env('memory_maze:MemoryMaze-9x9-v0'); "
                       "env.reset(seed=0); env.step(1); env.close()"], tmp_path, 300)
