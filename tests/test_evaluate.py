"""Evaluation (`python -m torchbeast.evaluate`) and test mode (`--mode test`): same seeds for every
agent, parallel episodes, the baselines, the published-score columns, the files written, and bad
input as one line with exit status 2."""
import argparse
import csv
import json
import os
import shutil

import pytest
import torch
from cli import run_module

from torchbeast.core import evaluate as test_mode
from torchbeast.core.checkpoint import save_checkpoint
from torchbeast.core.episode_pool import EpisodeResult, EpisodeTask, play_episodes
from torchbeast.core.play import AgentPolicy, RandomPolicy, play_episode
from torchbeast.core.runs import build_model
from torchbeast.core.scores import canonical_env_id, percent_of, published_scores, summarize
from torchbeast.errors import ConfigError

CUE = "torchbeast:CueMemory-v0"
MAZE9 = "memory_maze:MemoryMaze-9x9-ExtraObs-v0"
OLD_CHECKPOINT = os.path.join(os.path.dirname(__file__), "data", "cue_memory_313556b.tar")
TINY = ["--encoder", "small", "--hidden_size", "16"]


def fake_run(savedir, xpid, env=CUE, use_lstm=True, posemb="none", step=123, meta=True):
    """A run folder as training leaves it (checkpoint, meta.json) with an untrained tiny agent."""
    config = dict(posemb=posemb, encoder="small", use_lstm=use_lstm, hidden_size=16)
    torch.manual_seed(0)
    flags = dict(env=env, pos_noise=0.0, posemb=posemb, use_lstm=use_lstm)
    save_checkpoint(str(savedir / xpid / "model.tar"),
                    dict(model_state_dict=build_model(config).state_dict(), model_config=config, step=step,
                         flags=flags))
    if meta:
        (savedir / xpid / "meta.json").write_text(json.dumps(dict(flags=flags, starts=[])))
    return savedir / xpid


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """SAVEDIR with "mem", a CueMemory run trained briefly by MonoBeast, and "ff", a no-memory agent."""
    savedir = tmp_path_factory.mktemp("runs")
    run_module("torchbeast.monobeast", "--env", CUE, *TINY, "--total_steps", 2000, "--num_actors", 2,
               "--batch_size", 4, "--unroll_length", 10, "--savedir", savedir, "--xpid", "mem", "--seed", 1)
    fake_run(savedir, "ff", use_lstm=False)
    return savedir


# Scores and summaries.

def test_published_scores_by_maze_size_for_every_spelling_and_none_for_test_tasks():
    assert published_scores("memory_maze:MemoryMaze-9x9-v0").human == 26.4
    assert published_scores("MemoryMaze-15x15-ExtraObs-v0").oracle == 87.7
    assert published_scores("memory_maze:MemoryMaze-13x13-Top-v0").human == 55.5
    assert published_scores(CUE) is None
    assert canonical_env_id("MemoryMaze-9x9-ExtraObs-v0") == MAZE9 and canonical_env_id(CUE) == CUE


def test_summary_uses_the_sample_standard_deviation():
    summary = summarize([1.0, 2.0, 3.0, 4.0])
    assert summary.mean == 2.5 and summary.std == pytest.approx(1.2909944) and summary.stderr == pytest.approx(
        1.2909944 / 2)
    assert summarize([5.0]).stderr is None and summarize([]).mean is None
    assert percent_of(17.4, 34.8) == pytest.approx(50.0) and percent_of(None, 34.8) is None


# One episode.

def test_an_episode_repeats_with_its_seed_and_differs_across_seeds():
    plays = [play_episode(CUE, RandomPolicy(), seed) for seed in (3, 3, 4, 5, 6, 7)]
    assert all(p.length == 5 for p in plays)
    first, again = plays[0], plays[1]
    assert (first.episode_return, first.length) == (again.episode_return, again.length)
    cues = [play_episode(CUE, RandomPolicy(), seed, record=True, max_steps=1).frames[0][:, 0, 0].tolist()
            for seed in range(8)]
    assert len({tuple(c) for c in cues}) == 2  # both cues occur over 8 seeds: seeds pick the episode


def test_recording_keeps_every_frame_and_max_steps_cuts_the_episode():
    whole = play_episode(CUE, RandomPolicy(), 0, record=True)
    assert len(whole.frames) == whole.length + 1 == 6 and len(whole.positions) == 6
    cut = play_episode(CUE, RandomPolicy(), 0, max_steps=2)
    assert cut.length == 2 and cut.frames == []


class SpyModel(torch.nn.Module):
    """Records the agent state it is given; returns a new state object each step."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def initial_state(self, batch_size):
        return ("state", 0)

    def forward(self, step, state):
        self.seen.append(state)
        return {"action": torch.zeros(1, 1, dtype=torch.int64)}, ("state", state[1] + 1)


def test_the_agent_state_is_carried_from_step_to_step_and_reset_per_episode():
    model = SpyModel()
    policy = AgentPolicy(model)
    play_episode(CUE, policy, 0)
    play_episode(CUE, policy, 1)
    assert [s[1] for s in model.seen] == [0, 1, 2, 3, 4] * 2


# Parallel episodes.

def test_results_do_not_depend_on_the_number_of_workers():
    tasks = [EpisodeTask(agent="random", checkpoint=None, env_id=CUE, seed=seed) for seed in range(12)]
    one = sorted((r.task.seed, r.episode_return) for r in play_episodes(tasks, 1))
    two = sorted((r.task.seed, r.episode_return) for r in play_episodes(tasks, 2))
    assert one == two and len(one) == 12
    assert 0 < sum(ret for _, ret in one) < 12  # a random policy wins some episodes, not all


def test_a_worker_error_reaches_the_caller(tmp_path):
    tasks = [EpisodeTask(agent="x", checkpoint=str(tmp_path / "missing.tar"), env_id=CUE, seed=0)]
    with pytest.raises(ConfigError, match="does not exist"):
        list(play_episodes(tasks, 1))


# python -m torchbeast.evaluate

def test_evaluate_plays_every_agent_on_the_same_seeds_and_writes_the_table_and_files(runs, tmp_path):
    out = tmp_path / "out"
    proc = run_module("torchbeast.evaluate", "--savedir", runs, "--xpids", "mem", "--no_memory", "ff",
                      "--episodes", 6, "--seed", 10, "--num_workers", 2, "--record", "--out", out)
    table = proc.stdout
    assert f"{CUE}: 6 episodes per agent, seeds 10-15 (no published human/oracle scores)" in table
    lines = {line.split()[0]: line for line in table.splitlines() if line.split()[:1] in (["mem"], ["ff"], ["random"])}
    assert "(no-memory baseline)" in lines["ff"] and "(baseline)" in lines["random"]
    assert lines["mem"].split()[1] == "2,000" and lines["mem"].rstrip().endswith("-")  # no % columns for CueMemory

    results = json.loads((out / "evaluation.json").read_text())
    assert results["settings"]["seed"] == 10 and results["settings"]["episodes"] == 6
    by_agent = {r["agent"]: r for r in results["results"]}
    assert set(by_agent) == {"mem", "ff", "random"}
    assert [by_agent[a]["kind"] for a in ("mem", "ff", "random")] == ["run", "no_memory", "random"]
    for r in by_agent.values():
        assert r["seeds"] == list(range(10, 16)) and r["lengths"] == [5] * 6 and len(r["returns"]) == 6
        assert r["mean_return"] == pytest.approx(sum(r["returns"]) / 6)
        assert len(r["videos"]) == 6 and all(os.path.getsize(v) > 0 for v in r["videos"])
    assert by_agent["mem"]["trained_steps"] >= 2000
    with open(out / "evaluation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["agent"] for row in rows] == ["mem", "ff", "random"]
    assert float(rows[0]["mean_return"]) == pytest.approx(by_agent["mem"]["mean_return"])

    # --mode test plays the same episodes (env seed SEED + i, actions sampled with it) in parallel.
    run_module("torchbeast.monobeast", "--mode", "test", "--env", CUE, "--savedir", runs, "--xpid", "mem",
               "--test_episodes", 6, "--seed", 10, "--num_actors", 2)
    tested = json.loads((runs / "mem" / "test_results.json").read_text())
    assert tested["returns"] == by_agent["mem"]["returns"]
    assert tested["episode_seeds"] == list(range(10, 16)) and tested["complete"] is True
    for key in ("checkpoint", "env", "trained_steps", "episodes", "returns", "lengths", "mean_return",
                "std_return", "stderr_return", "videos", "seed"):
        assert key in tested, key


def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys):
    from torchbeast.evaluate import main

    (runs / "empty").mkdir(exist_ok=True)
    cases = [
        (["--xpids", "empty"], "model.tar does not exist"),
        (["--xpids", "mem", "--no_memory", "mem"], "named more than once"),
        (["--xpids", "ff", "--no_memory", "mem"], "--no_memory mem: the run was trained with the LSTM"),
        (["--xpids", "mem", "--episodes", "0", "--num_workers", "-1"], "--num_workers must be positive"),
        (["--xpids", "mem", "--max_steps", "0"], "--max_steps must be positive"),
    ]
    for args, needle in cases:
        assert main(["--savedir", str(runs), "--out", str(tmp_path), *args]) == 2, args
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, (args, err)
    # As a user runs it:
    proc = run_module("torchbeast.evaluate", "--savedir", runs, "--xpids", "nope", check=False, timeout=120)
    assert proc.returncode == 2 and "--xpids nope: no run" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_evaluate_on_a_real_maze_reports_the_published_score_columns(tmp_path):
    fake_run(tmp_path, "maze", env=MAZE9, posemb="gt")
    proc = run_module("torchbeast.evaluate", "--savedir", tmp_path, "--xpids", "maze", "--episodes", 2,
                      "--max_steps", 40, "--num_workers", 2, "--record")
    assert "(human 26.4, oracle 34.8); episodes cut at 40 steps" in proc.stdout
    results = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())["results"]
    assert [r["agent"] for r in results] == ["maze", "random"]
    for r in results:
        assert r["lengths"] == [40, 40] and r["oracle_score"] == 34.8 and r["human_score"] == 26.4
        assert r["pct_oracle"] == pytest.approx(100 * r["mean_return"] / 34.8)
    import imageio.v3 as iio

    frame = iio.imread(results[0]["videos"][0], index=0)
    assert frame.shape[1] > frame.shape[0]  # the agent's view with the maze map beside it


# Test mode: which checkpoint, which env, results written as episodes end.

def test_newest_run_of_the_env_is_picked_not_the_newest_run(tmp_path):
    old = fake_run(tmp_path, "maze-run", env="MemoryMaze-9x9-ExtraObs-v0")
    os.utime(old / "model.tar", (1, 1))
    fake_run(tmp_path, "cue-new", env=CUE)
    legacy = tmp_path / "legacy"  # no meta.json: the env comes from the checkpoint
    legacy.mkdir()
    shutil.copy(OLD_CHECKPOINT, legacy / "model.tar")
    os.utime(legacy / "model.tar", (2, 2))

    assert test_mode.newest_checkpoint_for_env(str(tmp_path), MAZE9) == str(old / "model.tar")
    assert test_mode.newest_checkpoint_for_env(str(tmp_path), CUE) == str(tmp_path / "cue-new" / "model.tar")
    os.remove(tmp_path / "cue-new" / "model.tar")
    assert test_mode.newest_checkpoint_for_env(str(tmp_path), CUE) == str(legacy / "model.tar")
    with pytest.raises(ConfigError) as error:
        test_mode.newest_checkpoint_for_env(str(tmp_path), "memory_maze:MemoryMaze-11x11-v0")
    message = str(error.value)
    assert "no run trained on --env memory_maze:MemoryMaze-11x11-v0" in message
    assert f"maze-run on {MAZE9}" in message and f"legacy on {CUE}" in message


def test_a_checkpoint_of_another_env_is_refused_unless_allowed(runs, tmp_path):
    proc = run_module("torchbeast.monobeast", "--mode", "test", "--env", MAZE9, "--savedir", runs, "--xpid", "mem",
                      check=False, timeout=120)
    assert proc.returncode == 2 and "trained on --env torchbeast:CueMemory-v0, not --env" in proc.stderr
    assert "--allow_env_mismatch" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1

    state = {"flags": {"env": "MemoryMaze-9x9-ExtraObs-v0"}}
    test_mode.check_trained_env(state, MAZE9, "x", allow_mismatch=False)  # same env, other spelling
    test_mode.check_trained_env(state, CUE, "x", allow_mismatch=True)
    with pytest.raises(ConfigError, match="not --env torchbeast:CueMemory-v0"):
        test_mode.check_trained_env(state, CUE, "x", allow_mismatch=False)


def test_an_interrupted_test_keeps_the_episodes_it_finished(tmp_path, monkeypatch):
    run = fake_run(tmp_path, "run")

    def two_then_ctrl_c(tasks, num_workers):
        assert num_workers == 3 and [t.seed for t in tasks] == [7, 8, 9, 10]
        for task, ret in zip(tasks[:2], (1.0, 0.0)):
            yield EpisodeResult(task, ret, 5, None)
            assert json.loads((run / "test_results.json").read_text())["returns"][-1] == ret  # written at once
        raise KeyboardInterrupt

    monkeypatch.setattr(test_mode, "play_episodes", two_then_ctrl_c)
    flags = argparse.Namespace(checkpoint=None, savedir=str(tmp_path), xpid="run", env=CUE, seed=7, pos_noise=0.0,
                               env_impl="fast", test_episodes=4, record=False, num_actors=3)
    with pytest.raises(KeyboardInterrupt):
        test_mode.test(flags)
    results = json.loads((run / "test_results.json").read_text())
    assert results["returns"] == [1.0, 0.0] and results["episodes"] == 2 and results["complete"] is False
    assert results["mean_return"] == 0.5 and results["episode_seeds"] == [7, 8]
