"""--mode test: play episodes with a saved agent in parallel processes, optionally recording videos.

Shared by MonoBeast and PolyBeast: both save the same checkpoint format. Episode i is played on
the env made with seed SEED + i (`torchbeast.core.play`), so a test repeats whatever the number
of processes. Each finished episode is written to SAVEDIR/XPID/test_results.json at once, so an
interrupted test keeps the episodes it finished.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional

from torchbeast.core.atomic_file import write_json
from torchbeast.core.checkpoint import load_checkpoint
from torchbeast.core.episode_pool import EpisodeResult, EpisodeTask, play_episodes
from torchbeast.core.play import check_agent_fits_env, load_agent
from torchbeast.core.runs import check_trained_env
from torchbeast.core.scores import canonical_env_id, summarize
from torchbeast.errors import ConfigError

log = logging.getLogger("torchbeast")


def run_env(run_dir: str) -> Optional[str]:
    """The env a run in `run_dir` was trained on: from meta.json, else its checkpoint; None if unknown."""
    try:
        with open(os.path.join(run_dir, "meta.json")) as f:
            env = json.load(f)["flags"]["env"]
        if isinstance(env, str):
            return env
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return load_checkpoint(os.path.join(run_dir, "model.tar"))["flags"].get("env")
    except (ConfigError, AttributeError):
        return None


def newest_checkpoint_for_env(savedir: str, env_id: str) -> str:
    """SAVEDIR/*/model.tar of the newest run trained on `env_id`; ConfigError naming the others if none."""
    candidates = sorted(glob.glob(os.path.join(savedir, "*", "model.tar")), key=os.path.getmtime, reverse=True)
    if not candidates:
        raise ConfigError(f"--mode test: no checkpoint found under --savedir {savedir} "
                          "(train first, or pass --xpid or --checkpoint)")
    wanted = canonical_env_id(env_id)
    others: Dict[str, str] = {}  # env -> newest xpid trained on it
    for path in candidates:
        run_dir = os.path.dirname(path)
        env = run_env(run_dir)
        env = canonical_env_id(env) if env is not None else "an unknown env"
        if env == wanted:
            return path
        others.setdefault(env, os.path.basename(run_dir))
    found = ", ".join(f"{xpid} on {env}" for env, xpid in others.items())
    raise ConfigError(f"--mode test: no run trained on --env {env_id} under --savedir {savedir}; found runs of "
                      f"other envs (the newest of each): {found} (pass that --env, or --xpid to pick a run)")


def test_checkpoint(flags: argparse.Namespace) -> str:
    """--checkpoint, else SAVEDIR/XPID/model.tar, else the newest run in SAVEDIR trained on --env."""
    if flags.checkpoint:
        return flags.checkpoint
    savedir = os.path.expanduser(flags.savedir)
    if flags.xpid is not None:
        return os.path.join(savedir, flags.xpid, "model.tar")
    return newest_checkpoint_for_env(savedir, flags.env)


def _results(checkpoint: str, flags: argparse.Namespace, trained_steps: int, seed: int, total: int,
             finished: List[EpisodeResult]) -> Dict[str, Any]:
    """test_results.json: the finished episodes in episode order, and their summary."""
    finished = sorted(finished, key=lambda result: result.task.seed)
    returns = [result.episode_return for result in finished]
    summary = summarize(returns)
    return dict(
        checkpoint=os.path.abspath(checkpoint), env=flags.env, trained_steps=trained_steps,
        episodes=len(finished), returns=returns, lengths=[result.length for result in finished],
        mean_return=summary.mean, std_return=summary.std, stderr_return=summary.stderr,
        videos=[result.video for result in finished if result.video is not None], seed=seed,
        episode_seeds=[result.task.seed for result in finished], complete=len(finished) == total,
    )


def test(flags: argparse.Namespace, num_workers: Optional[int] = None) -> Dict[str, Any]:
    """Plays --test_episodes episodes over `num_workers` processes (default: --num_actors where the
    command has it, else 1); prints each and writes test_results.json next to the checkpoint."""
    checkpoint = test_checkpoint(flags)
    _, state = load_agent(checkpoint)
    check_trained_env(state, flags.env, checkpoint, getattr(flags, "allow_env_mismatch", False))
    check_agent_fits_env(state, flags.env, checkpoint)
    if num_workers is None:
        num_workers = getattr(flags, "num_actors", None) or 1
    run_dir = os.path.dirname(os.path.abspath(checkpoint))
    seed = flags.seed if flags.seed is not None else 0
    tasks = _tasks(flags, checkpoint, seed, os.path.join(run_dir, "videos"))
    episode_number = {task: i + 1 for i, task in enumerate(tasks)}

    trained_steps = int(state["step"])
    workers = min(num_workers, len(tasks))
    log.info("Testing %s (trained for %d steps) on %s: %d episodes over %d processes", checkpoint,
             trained_steps, flags.env, len(tasks), workers)
    results_path = os.path.join(run_dir, "test_results.json")
    finished: List[EpisodeResult] = []
    write_json(results_path, _results(checkpoint, flags, trained_steps, seed, len(tasks), finished))  # no stale file
    start = time.monotonic()
    for result in play_episodes(tasks, workers):
        finished.append(result)
        print(f"episode {episode_number[result.task]}: return {result.episode_return:g} in {result.length} steps "
              f"({len(finished)}/{len(tasks)} done, {time.monotonic() - start:.0f} s)", flush=True)
        write_json(results_path, _results(checkpoint, flags, trained_steps, seed, len(tasks), finished))
    results = _results(checkpoint, flags, trained_steps, seed, len(tasks), finished)
    std = "" if results["std_return"] is None else f" +- {results['std_return']:.3f}"
    print(f"mean return over {results['episodes']} episodes: {results['mean_return']:.3f}{std}", flush=True)
    return results


def _tasks(flags: argparse.Namespace, checkpoint: str, seed: int, video_dir: str) -> List[EpisodeTask]:
    """Episode i on the env made with seed SEED + i; with --record, its video as episode_<i+1>.mp4."""
    return [EpisodeTask(agent="test", checkpoint=os.path.abspath(checkpoint), env_id=flags.env, seed=seed + i,
                        pos_noise=flags.pos_noise, impl=flags.env_impl,
                        video_path=os.path.join(video_dir, f"episode_{i + 1:03d}.mp4") if flags.record else None)
            for i in range(flags.test_episodes)]
