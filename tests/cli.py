"""Running the command-line entry points as a user does, for the end-to-end tests."""
import os
import signal
import subprocess
import sys
import time
from typing import Callable, List


def run_module(module, *args, timeout=600, check=True):
    """`python -m module args...`; returns the CompletedProcess, raising with its output on failure."""
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "osmesa"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def start_until_first_progress_line(module, *args, timeout=120):
    """Starts a run in its own session and reads its output until its first progress line past
    step 0 (or `timeout` seconds); returns (Popen, the lines read)."""
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "osmesa"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            learned = line.startswith("step") and line.split()[1] != "0"  # a progress line after an update
            if learned or time.monotonic() > deadline:
                break
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc, lines


def interrupt_after_first_progress_line(module, *args, timeout=120):
    """Sends SIGINT to the whole group (as Ctrl-C does) once the run prints its first progress
    line past step 0; returns (Popen, output)."""
    proc, lines = start_until_first_progress_line(module, *args, timeout=timeout)
    return proc, finish(proc, lines, lambda: os.killpg(proc.pid, signal.SIGINT))


def kill_a_child_after_first_progress_line(module, *args, timeout=120):
    """SIGKILLs one child process of the run (an actor or env server: the multiprocessing
    children other than its resource tracker) once it prints its first progress line past
    step 0; returns (Popen, output, the killed pid)."""
    import psutil

    proc, lines = start_until_first_progress_line(module, *args, timeout=timeout)
    try:
        children = [p for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    except psutil.Error:  # the run ended before its children could be listed
        children = []
    if not children:
        os.killpg(proc.pid, signal.SIGKILL)
        output = "".join(lines) + proc.communicate(timeout=60)[0]
        raise AssertionError(f"no child process left to kill (exit {proc.returncode}); output:\n{output}")
    victim = children[-1].pid
    return proc, finish(proc, lines, lambda: os.kill(victim, signal.SIGKILL)), victim


def finish(proc, lines, action):
    """Does `action` to a run started by start_until_first_progress_line and returns its whole output."""
    try:
        action()
        return "".join(lines) + proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def assert_no_process_left(session, wait=5.0):
    """No process of the run's session outlives it (beyond a few seconds)."""
    deadline = time.monotonic() + wait
    while True:
        left = subprocess.run(["ps", "-o", "pid=,args=", "-s", str(session)], capture_output=True, text=True).stdout
        if not left.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left.strip() == "", f"processes left behind:\n{left}"


# The CueMemory learning tests' budget, shared by MonoBeast and PolyBeast. A warmup keeps RMSProp's
# oversized first updates from killing the small encoder's ReLUs on these flat-colour frames
# (without it about 1 run in 5 never learned the cue); 150k steps leave room for slow starters.
# Entropy cost 0.003, not 0.01: 4 of CueMemory's 5 steps have no rewarded action, and with 0.01
# a learned policy collapsed (return 0.97 -> 0.1-0.5) in about a third of the runs and had to
# relearn; with 0.003, all 14 swept runs ended at 0.99-1.0 (a 15th collapsed: see learns_the_cue).
CUE_LEARNING_FLAGS = ["--env", "torchbeast:CueMemory-v0", "--encoder", "small", "--hidden_size", "64",
                      "--batch_size", "8", "--unroll_length", "20", "--total_steps", "150000",
                      "--warmup_steps", "16000", "--entropy_cost", "0.003", "--discounting", "0.9",
                      "--log_interval", "10"]
CUE_LEARNING_BAR = 0.75  # random play scores 1/6 and the best policy without memory 1/2


def learns_the_cue(trained_test_return: Callable[[int], float]) -> List[float]:
    """Test returns of training runs with seeds 1 and, only if seed 1 misses the bar, 2.

    A run is not repeatable (actor scheduling decides which rollouts make a batch), and about 1
    run in 15 of a working learner collapses late into the memoryless policy (return ~0.5) and
    does not recover in the budget (sessions 3-4: 2 of 29 runs with entropy cost 0.01, 1 of 15
    with 0.003). A second seed brings a working learner's failure rate to ~0.5%; a broken learner
    fails both.
    """
    returns = [trained_test_return(1)]
    if returns[0] <= CUE_LEARNING_BAR:
        returns.append(trained_test_return(2))
    return returns
