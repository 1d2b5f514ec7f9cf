"""Episode returns summarised, and the human and oracle scores published with Memory Maze.

The published scores (the memory-maze README; Pasukonis et al., 2022, "Evaluating Long-Term
Memory in 3D Mazes") are mean episode returns per maze size; they hold for every variant of a
size (ExtraObs, Top, ...: same mazes, rewards and episode lengths).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

from torchbeast.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PublishedScores:
    human: float
    oracle: float


PUBLISHED_SCORES = {
    9: PublishedScores(human=26.4, oracle=34.8),
    11: PublishedScores(human=44.3, oracle=58.0),
    13: PublishedScores(human=55.5, oracle=74.5),
    15: PublishedScores(human=67.7, oracle=87.7),
}


def canonical_env_id(env_id: str) -> str:
    """`env_id` with the `memory_maze:` namespace for Memory Maze ids (either spelling names one env)."""
    from torchbeast.envs.ids import env_spec

    try:
        return env_spec(env_id).env_id
    except ConfigError:
        return env_id  # a test task (CueMemory, PositionTask)


def published_scores(env_id: str) -> Optional[PublishedScores]:
    """The published scores of `env_id`'s maze size; None for envs that are not Memory Maze."""
    from torchbeast.envs.ids import env_spec

    try:
        return PUBLISHED_SCORES.get(env_spec(env_id).maze_size)
    except ConfigError:
        return None


@dataclasses.dataclass(frozen=True)
class ReturnSummary:
    episodes: int
    mean: Optional[float]  # None without episodes
    std: Optional[float]  # sample standard deviation; None below 2 episodes
    stderr: Optional[float]  # standard error of the mean; None below 2 episodes


def summarize(returns: Sequence[float]) -> ReturnSummary:
    n = len(returns)
    mean = math.fsum(returns) / n if n else None
    if n < 2:
        return ReturnSummary(n, mean, None, None)
    std = math.sqrt(math.fsum((r - mean) ** 2 for r in returns) / (n - 1))
    return ReturnSummary(n, mean, std, std / math.sqrt(n))


def percent_of(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    """100 * value / reference, or None when either is missing."""
    if value is None or reference is None:
        return None
    return 100.0 * value / reference
