"""Plays many episodes in parallel processes, giving each result as soon as its episode ends.

Workers are started with the spawn context (no torch state forked from the parent), with
OMP_NUM_THREADS=1 in their environment before torch starts, and one torch thread each: a batch-1
model step is fastest on one thread, and several threads per process on a busy CPU slow each step
~10x. Each worker loads an agent once per checkpoint and makes a fresh env per episode (seeded:
see `torchbeast.core.play`), and writes the episode's video itself when asked, so frames never
cross processes. Workers ignore SIGINT: on Ctrl-C the parent stops them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
from typing import Dict, Iterator, Optional, Sequence

import torch

from torchbeast.core.child_processes import die_with_parent
from torchbeast.core.cli import children_ignore_sigint, quiet_env_logging
from torchbeast.core.play import AgentPolicy, Policy, RandomPolicy, load_agent, play_episode


@dataclasses.dataclass(frozen=True)
class EpisodeTask:
    """One episode to play: which policy (a checkpoint, or None for uniformly random), where, how."""

    agent: str  # the caller's name for the policy, to group results
    checkpoint: Optional[str]
    env_id: str
    seed: int
    pos_noise: float = 0.0
    impl: str = "fast"
    max_steps: Optional[int] = None
    video_path: Optional[str] = None  # record the episode to this MP4


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    task: EpisodeTask
    episode_return: float
    length: int
    video: Optional[str]


_policies: Dict[Optional[str], Policy] = {}  # per worker process: checkpoint -> policy


def _policy(checkpoint: Optional[str]) -> Policy:
    if checkpoint not in _policies:
        _policies[checkpoint] = RandomPolicy() if checkpoint is None else AgentPolicy(load_agent(checkpoint)[0])
    return _policies[checkpoint]


def run_task(task: EpisodeTask) -> EpisodeResult:
    """Plays `task`'s episode (and writes its video when asked); runs in a worker."""
    episode = play_episode(task.env_id, _policy(task.checkpoint), task.seed, pos_noise=task.pos_noise,
                           impl=task.impl, record=task.video_path is not None, max_steps=task.max_steps)
    if task.video_path is not None:
        from torchbeast.envs.video import write_episode_video

        os.makedirs(os.path.dirname(os.path.abspath(task.video_path)), exist_ok=True)
        write_episode_video(task.video_path, episode.frames, positions=episode.positions or None,
                            maze_layout=episode.maze_layout)
    return EpisodeResult(task, episode.episode_return, episode.length, task.video_path)


def _init_worker() -> None:
    die_with_parent(signal.SIGKILL)  # a worker has nothing to save when its parent is gone
    torch.set_num_threads(1)
    quiet_env_logging()


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Sets environment variables for the processes started inside (spawned children copy them)."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def play_episodes(tasks: Sequence[EpisodeTask], num_workers: int) -> Iterator[EpisodeResult]:
    """Plays `tasks` over min(num_workers, len(tasks)) processes; yields results in the order they end.

    A worker's exception (e.g. a ConfigError) is raised here; stopping early (an exception or
    Ctrl-C in the caller, or closing the iterator) ends the workers.
    """
    if not tasks:
        return
    context = multiprocessing.get_context("spawn")
    with children_ignore_sigint(), _environ(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"):
        pool = context.Pool(min(num_workers, len(tasks)), initializer=_init_worker)
    try:
        yield from pool.imap_unordered(run_task, tasks, chunksize=1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()
