"""PositionTask: a tiny task where only the agent's position tells it which action pays.

Every step the agent is placed at a uniformly random point of a unit square split into
`columns x rows` cells (its left and right halves by default), and the action assigned to its
cell (action 1 + the cell index, of Memory Maze's 6) earns +1. The frame is the same black
everywhere and the position is drawn anew each step, so neither the frame nor memory helps: with
positions (`--posemb gt`) the best return is `episode_length` (5), without them 1/cells of that
(2.5 with two halves), and a random policy scores 5/6.

`torchbeast:PositionTask-ZeroPos-v0` is the same task with position and noisy position always
zero: there `--posemb gt` must do no better than `--posemb none`. Learning tests use the pair to
check that position inputs reach the policy. Like CueMemory, it steps in microseconds.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from torchbeast.envs.ids import extra_obs_shapes
from torchbeast.envs.memory_maze import NUM_ACTIONS

ENV_ID = "torchbeast:PositionTask-v0"
ZERO_POS_ENV_ID = "torchbeast:PositionTask-ZeroPos-v0"
ENV_IDS = (ENV_ID, ZERO_POS_ENV_ID)

# Black, not grey: a constant frame makes the encoder's output a learned bias. On a grey frame
# RMSProp grew it (mean output 7-44 instead of ~1) in about half the runs at lr 0.002-0.004,
# until it saturated the LSTM's gates and no position got through. On a black frame only the
# encoder's biases get a gradient.
_FRAME_VALUE = 0


class PositionTaskEnv:
    """Gymnasium-API env: reset() -> (obs, info); step(a) -> (obs, r, terminated, truncated, info)."""

    num_actions = NUM_ACTIONS  # Memory Maze's, so the same agent plays both
    has_positions = True
    maze_layout = None

    def __init__(self, seed: Optional[int] = None, pos_noise: float = 0.0, zero_positions: bool = False,
                 columns: int = 2, rows: int = 1, episode_length: int = 5) -> None:
        if columns < 1 or rows < 1 or columns * rows > NUM_ACTIONS - 1:
            raise ValueError(f"columns x rows must be 1 to {NUM_ACTIONS - 1} cells, got {columns} x {rows}")
        self.env_id = ZERO_POS_ENV_ID if zero_positions else ENV_ID
        self.cells = np.array([columns, rows])
        self.maze_size = max(columns, rows)  # positions are fractions of the side, noise is in cells
        self.pos_noise = pos_noise
        self.zero_positions = zero_positions
        self.max_episode_steps = episode_length
        self._rng = np.random.default_rng(seed)
        self._frame = np.full((3, 64, 64), _FRAME_VALUE, dtype=np.uint8)
        self._position = np.zeros(2, dtype=np.float32)
        self._t = 0

    def rewarded_action(self, position: np.ndarray) -> int:
        """The action that pays at `position` (fractions of the side, x then y): 1 + the cell index."""
        column, row = np.minimum((np.asarray(position) * self.cells).astype(int), self.cells - 1)
        return 1 + int(row * self.cells[0] + column)

    def _observation(self) -> Dict[str, np.ndarray]:
        noise = self._rng.normal(0.0, self.pos_noise, size=2) / self.maze_size
        position = self._position.copy()
        noisy = (position + noise).astype(np.float32)
        if self.zero_positions:
            position, noisy = np.zeros_like(position), np.zeros_like(noisy)
        return {
            "frame": self._frame.copy(),
            "position": position,
            "heading": np.array([1.0, 0.0], dtype=np.float32),
            "noisy_position": noisy,
        }

    def _place(self) -> None:
        self._position = self._rng.random(2).astype(np.float32)

    @staticmethod
    def observation_shapes() -> Dict[str, Tuple[Tuple[int, ...], str]]:
        """Key -> (shape, dtype name) of the observations."""
        return extra_obs_shapes()

    def reset(self, seed: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._t = 0
        self._place()
        return self._observation(), {}

    def step(self, action: int) -> Tuple[Dict[str, np.ndarray], float, bool, bool, Dict[str, Any]]:
        reward = 1.0 if int(action) == self.rewarded_action(self._position) else 0.0
        self._t += 1
        self._place()
        return self._observation(), reward, self._t >= self.max_episode_steps, False, {}

    def close(self) -> None:
        pass
