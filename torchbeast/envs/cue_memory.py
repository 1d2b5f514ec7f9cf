"""CueMemory: a tiny memory task for tests and debugging, with Memory Maze's interface.

Each episode shows one of two coloured cue frames, then `delay` grey frames, then a white
"choose now" frame. At the white frame the agent is rewarded +1 for the action that matches the
cue (action 1 for the red cue, action 2 for the blue one); then the episode ends. A random policy
scores 1/6, a policy without memory at most 1/2, a policy that remembers the cue 1. It steps in
microseconds, so learning tests can tell a working learner from a broken one in a minute on a CPU.

It is not a stand-in for Memory Maze: use it where the point is the learner, not the environment.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from torchbeast.envs.ids import extra_obs_shapes
from torchbeast.envs.memory_maze import NUM_ACTIONS

ENV_ID = "torchbeast:CueMemory-v0"

_CUE_COLOURS = np.array([[220, 40, 40], [40, 40, 220]], dtype=np.uint8)
_GREY = np.array([128, 128, 128], dtype=np.uint8)
_WHITE = np.array([255, 255, 255], dtype=np.uint8)


def _solid_frame(colour: np.ndarray) -> np.ndarray:
    return np.broadcast_to(colour.reshape(3, 1, 1), (3, 64, 64)).copy()


class CueMemoryEnv:
    """Gymnasium-API env: reset() -> (obs, info); step(a) -> (obs, r, terminated, truncated, info)."""

    num_actions = NUM_ACTIONS  # Memory Maze's, so the same agent plays both
    has_positions = True
    maze_size = 1
    maze_layout = None

    def __init__(self, seed: Optional[int] = None, pos_noise: float = 0.0, delay: int = 3) -> None:
        self.env_id = ENV_ID
        self.delay = delay
        self.pos_noise = pos_noise
        self.max_episode_steps = delay + 2
        self._rng = np.random.default_rng(seed)
        self._frames = [_solid_frame(c) for c in _CUE_COLOURS]
        self._grey = _solid_frame(_GREY)
        self._white = _solid_frame(_WHITE)
        self._cue = 0
        self._t = 0

    def _observation(self) -> Dict[str, np.ndarray]:
        if self._t == 0:
            frame = self._frames[self._cue]
        elif self._t <= self.delay:
            frame = self._grey
        else:
            frame = self._white
        # A fake "position" that advances through the episode, so --posemb runs on this env too.
        position = np.array([self._t / self.max_episode_steps, 0.5], dtype=np.float32)
        noise = self._rng.normal(0.0, self.pos_noise, size=2).astype(np.float32)
        return {
            "frame": frame.copy(),
            "position": position,
            "heading": np.array([1.0, 0.0], dtype=np.float32),
            "noisy_position": position + noise,
        }

    @staticmethod
    def observation_shapes() -> Dict[str, Tuple[Tuple[int, ...], str]]:
        """Key -> (shape, dtype name) of the observations."""
        return extra_obs_shapes()

    def reset(self, seed: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._cue = int(self._rng.integers(2))
        self._t = 0
        return self._observation(), {}

    def step(self, action: int) -> Tuple[Dict[str, np.ndarray], float, bool, bool, Dict[str, Any]]:
        choosing = self._t == self.delay + 1
        reward = 1.0 if choosing and int(action) == 1 + self._cue else 0.0
        self._t = min(self._t + 1, self.delay + 1)
        return self._observation(), reward, choosing, False, {}

    def close(self) -> None:
        pass
