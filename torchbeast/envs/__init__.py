"""Environments: Memory Maze behind the Gymnasium API (`make_env`), and helpers around it.

Importing this package does not import dm_control or mujoco, so `configure_rendering()` (called
by `make_env`) can still choose the headless OpenGL backend.
"""
from torchbeast.envs.ids import (
    MEMORY_MAZE_IDS,
    MemoryMazeSpec,
    env_spec,
    has_positions,
    observation_shapes,
)
from torchbeast.envs.memory_maze import IMPLS, NUM_ACTIONS, MemoryMazeEnv, make_env
from torchbeast.envs.rendering import configure_rendering

__all__ = [
    "IMPLS",
    "MEMORY_MAZE_IDS",
    "NUM_ACTIONS",
    "MemoryMazeEnv",
    "MemoryMazeSpec",
    "configure_rendering",
    "env_spec",
    "has_positions",
    "make_env",
    "observation_shapes",
]
