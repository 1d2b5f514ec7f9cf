"""MemoryMazeEnv: Memory Maze behind the Gymnasium API, with CHW frames and position observations.

memory_maze builds a dm_env environment and registers it with the old `gym` (4-value step,
`info['TimeLimit.truncated']`). We build the same dm_env from memory_maze's own registration
(so every id is configured exactly as `gym.make` would) but skip its gym wrapper, and speak the
Gymnasium API without depending on gymnasium:

    reset(seed=None) -> (obs, info)
    step(action) -> (obs, reward, terminated, truncated, info)

Memory Maze never terminates; an episode ends only at its time limit, which is reported as
truncated=True, terminated=False (dm_env: a LAST step with a non-zero discount).

Three implementations, all with the same mazes, rewards, positions and frames for the same seeds
and actions:
- `impl="fast"` (the default): `native_path` resets and steps the env itself (physics substeps in
  C++, rendering on the calling thread, textures uploaded once per env instead of once per
  episode); about twice the whole-episode rate of fast_v1 (benchmarks/README.md).
- `impl="fast_v1"`: the earlier fast path, `fast_path` installed on this env's own targets and
  cameras inside dm_control's loop; pure Python, kept for comparison.
- `impl="upstream"`: memory_maze and dm_control unchanged.

Note on `gym.make('memory_maze:MemoryMaze-9x9-v0')`: it works in this environment, but gym
0.26's default env checker crashes on the first step under NumPy 2 (`np.bool8`); pass
`disable_env_checker=True`. Our factory does not go through gym.make.
"""
from __future__ import annotations

import contextlib
import io
import math
import sys
from typing import Any, Dict, Optional, Tuple

import numpy as np

from torchbeast.envs.fast_path import FastPath, install_fast_path
from torchbeast.envs.ids import MemoryMazeSpec, env_spec
from torchbeast.envs.native_path import NativePath, NativePathUnavailable
from torchbeast.envs.rendering import configure_rendering
from torchbeast.errors import ConfigError

IMPLS = ("fast", "fast_v1", "upstream")
NUM_ACTIONS = 6  # noop, forward, left, right, forward+left, forward+right

Observation = Dict[str, np.ndarray]


def _gym_registry() -> Any:
    """Import memory_maze (which registers its ids with gym) and return gym's registry."""
    configure_rendering()
    if "gym" not in sys.modules:
        # gym 0.26 prints a four-line "unmaintained" notice to stderr on import, once per actor.
        with contextlib.redirect_stderr(io.StringIO()):
            import gym  # noqa: F401
    import memory_maze  # noqa: F401
    from gym.envs.registration import registry

    return registry


def _build_dm_env(spec: MemoryMazeSpec, seed: Optional[int]) -> Any:
    """The dm_env that `gym.make(spec.env_id, seed=seed)` would wrap."""
    entry_point = _gym_registry()[spec.registered_name].entry_point
    # memory_maze registers functools.partial(_make_gym_env, <dm task>, **task_kwargs).
    (dm_task,) = entry_point.args
    return dm_task(seed=seed, **entry_point.keywords)


def _composer_env(dm_env: Any) -> Any:
    """The dm_control composer Environment under memory_maze's chain of dm_env wrappers."""
    from dm_control import composer

    env = dm_env
    while not isinstance(env, composer.Environment):
        env = env.env
    return env


def episode_end(timestep: Any) -> Tuple[bool, bool]:
    """(terminated, truncated) for a dm_env TimeStep: a LAST step with discount 0 terminates."""
    if not timestep.last():
        return False, False
    if timestep.discount == 0.0:
        return True, False
    return False, True


class MemoryMazeEnv:
    """One Memory Maze environment; see the module docstring for the API."""

    num_actions = NUM_ACTIONS

    def __init__(self, env_id: str, *, seed: Optional[int] = None, pos_noise: float = 0.0,
                 impl: str = "fast") -> None:
        spec = env_spec(env_id)
        if impl not in IMPLS:
            raise ConfigError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        if not (math.isfinite(pos_noise) and pos_noise >= 0.0):
            raise ConfigError(f"pos_noise must be a finite number >= 0 (maze cells), got {pos_noise}")
        self._spec = spec
        self.env_id = spec.env_id
        self.impl = impl
        self.maze_size = spec.maze_size
        self.has_positions = spec.has_positions
        self.max_episode_steps = spec.max_episode_steps
        self.pos_noise = float(pos_noise)
        # The current episode's layout, (N, N) uint8, 1 = free, [0, 0] the bottom-left cell
        # (row = y, column = x in `position` * maze_size). None without ExtraObs.
        self.maze_layout: Optional[np.ndarray] = None
        self._dm_env: Any = None
        self._fast_path: Optional[FastPath] = None
        self._native: Optional[NativePath] = None
        self._build(seed)

    def _build(self, seed: Optional[int]) -> None:
        self._close_dm_env()
        self._dm_env = _build_dm_env(self._spec, seed)
        if self.impl == "fast":
            try:
                self._native = NativePath(self._dm_env)
            except NativePathUnavailable as e:
                self._close_dm_env()
                raise ConfigError(f"{self._spec.env_id}: {e}") from None
        elif self.impl == "fast_v1":
            self._fast_path = install_fast_path(_composer_env(self._dm_env))
        # Separate from the maze's RandomState, so noise never changes the mazes.
        self._noise_rng = np.random.default_rng(seed)
        self._episode_over = True

    def reset(self, *, seed: Optional[int] = None,
              options: Optional[Dict[str, Any]] = None) -> Tuple[Observation, Dict[str, Any]]:
        """Start an episode. A seed rebuilds the env (about a second) so the maze sequence restarts."""
        if seed is not None:
            self._build(seed)
        timestep = self._native.reset() if self._native is not None else self._dm_env.reset()
        self._episode_over = False
        if self.has_positions:
            self.maze_layout = np.array(timestep.observation["maze_layout"], dtype=np.uint8)
        return self._observation(timestep.observation), {}

    def step(self, action: Any) -> Tuple[Observation, float, bool, bool, Dict[str, Any]]:
        if self._episode_over:
            raise RuntimeError("step() called before reset() or after the episode ended")
        action = int(action)
        if not 0 <= action < NUM_ACTIONS:
            raise ValueError(f"action must be in [0, {NUM_ACTIONS}), got {action}")
        timestep = self._native.step(action) if self._native is not None else self._dm_env.step(action)
        terminated, truncated = episode_end(timestep)
        self._episode_over = terminated or truncated
        return self._observation(timestep.observation), float(timestep.reward), terminated, truncated, {}

    def _observation(self, raw: Any) -> Observation:
        image = raw["image"] if isinstance(raw, dict) else raw
        obs = {"frame": np.ascontiguousarray(np.transpose(image, (2, 0, 1)), dtype=np.uint8)}
        if self.has_positions:
            position = np.asarray(raw["agent_pos"], dtype=np.float64)
            noisy = position
            if self.pos_noise > 0.0:
                noisy = position + self._noise_rng.normal(0.0, self.pos_noise, size=2)
            obs["position"] = (position / self.maze_size).astype(np.float32)
            obs["heading"] = np.asarray(raw["agent_dir"], dtype=np.float32)
            obs["noisy_position"] = (noisy / self.maze_size).astype(np.float32)
        return obs

    def _close_dm_env(self) -> None:
        if self._native is not None:
            self._native.close()
            self._native = None
        if self._fast_path is not None:
            self._fast_path.close()
            self._fast_path = None
        if self._dm_env is not None:
            self._dm_env.close()
            self._dm_env = None

    def close(self) -> None:
        """Free the physics and renderer; the env cannot be used afterwards."""
        self._close_dm_env()

    def __enter__(self) -> "MemoryMazeEnv":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryMazeEnv({self.env_id!r}, impl={self.impl!r}, pos_noise={self.pos_noise})"


def make_env(env_id: str, *, seed: Optional[int] = None, pos_noise: float = 0.0,
             impl: str = "fast") -> MemoryMazeEnv:
    """Build the Memory Maze env `env_id` (any id in MEMORY_MAZE_IDS, prefix optional).

    `seed` fixes the mazes, spawn points, targets and position noise; `pos_noise` is the std of
    the Gaussian noise in `noisy_position`, in maze cells; `impl` is one of IMPLS ("fast",
    "fast_v1", "upstream"; see the module docstring).
    """
    return MemoryMazeEnv(env_id, seed=seed, pos_noise=pos_noise, impl=impl)
