"""The Memory Maze gym ids and what can be known about each without building it.

Building a Memory Maze env imports dm_control and compiles a MuJoCo model (about a second), so
the agent and flag validation read shapes, sizes and episode lengths from here instead. The
table mirrors memory_maze 1.0.3's registration (`memory_maze/__init__.py`); a test checks it
against the live gym registry and a built env.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Dict, Tuple

from torchbeast.errors import ConfigError

NAMESPACE = "memory_maze"
MAZE_SIZES = (9, 11, 13, 15)
# Episode length in seconds of simulated time, per maze size (memory_maze.tasks).
_EPISODE_SECONDS = {9: 250, 11: 500, 13: 750, 15: 1000}
_DEFAULT_CONTROL_FREQ = 4
_HIFREQ_CONTROL_FREQ = 40
# The variant part of each registered id, in registration order: MemoryMaze-9x9-<variant>v0.
_VARIANTS = (
    "", "Vis-", "HD-", "Top-",
    "ExtraObs-", "ExtraObs-Vis-", "ExtraObs-Top-",
    "Oracle-", "Oracle-Top-", "Oracle-ExtraObs-",
    "HiFreq-", "HiFreq-Vis-", "HiFreq-HD-",
    "6CL-", "6CL-Top-", "6CL-ExtraObs-",
)

MEMORY_MAZE_IDS: Tuple[str, ...] = tuple(
    f"{NAMESPACE}:MemoryMaze-{n}x{n}-{variant}v0" for n in MAZE_SIZES for variant in _VARIANTS)

_ID_PATTERN = re.compile(r"^(?:memory_maze:)?MemoryMaze-(\d+)x\1-(.*)v0$")


@dataclasses.dataclass(frozen=True)
class MemoryMazeSpec:
    """Static facts about one Memory Maze id."""

    env_id: str  # With the namespace, as in MEMORY_MAZE_IDS.
    registered_name: str  # As memory_maze registers it with gym (no namespace).
    maze_size: int
    has_positions: bool  # ExtraObs variants expose the agent's position and the maze layout.
    frame_size: int  # Side of the square RGB frame: 64, or 256 for the HD and Top cameras.
    control_freq: int  # Agent steps per simulated second.
    max_episode_steps: int


def env_spec(env_id: str) -> MemoryMazeSpec:
    """Facts about `env_id` (with or without the `memory_maze:` prefix); ConfigError if unknown."""
    match = _ID_PATTERN.match(env_id)
    canonical = f"{NAMESPACE}:{env_id}" if not env_id.startswith(f"{NAMESPACE}:") else env_id
    if match is None or canonical not in MEMORY_MAZE_IDS:
        raise ConfigError(
            f"unknown Memory Maze env id {env_id!r}; expected one of: {', '.join(MEMORY_MAZE_IDS)}")
    maze_size = int(match.group(1))
    variant = match.group(2).split("-")
    control_freq = _HIFREQ_CONTROL_FREQ if "HiFreq" in variant else _DEFAULT_CONTROL_FREQ
    return MemoryMazeSpec(
        env_id=canonical,
        registered_name=canonical.split(":", 1)[1],
        maze_size=maze_size,
        has_positions="ExtraObs" in variant,
        frame_size=256 if ("HD" in variant or "Top" in variant) else 64,
        control_freq=control_freq,
        max_episode_steps=_EPISODE_SECONDS[maze_size] * control_freq,
    )


def has_positions(env_id: str) -> bool:
    """Whether `env_id`'s observations include position, heading and noisy_position."""
    return env_spec(env_id).has_positions


def observation_shapes(env_id: str) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """Key -> (shape, dtype name) of MemoryMazeEnv's observations for `env_id`, without building it."""
    spec = env_spec(env_id)
    shapes: Dict[str, Tuple[Tuple[int, ...], str]] = {
        "frame": ((3, spec.frame_size, spec.frame_size), "uint8")}
    if spec.has_positions:
        shapes.update({
            "position": ((2,), "float32"),
            "heading": ((2,), "float32"),
            "noisy_position": ((2,), "float32"),
        })
    return shapes


def extra_obs_shapes() -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """The observations of a 64x64 ExtraObs maze; the test tasks give the same, so one agent plays all."""
    return observation_shapes(f"{NAMESPACE}:MemoryMaze-9x9-ExtraObs-v0")
