"""The env an actor steps: which env `--env` names, and its step records as agent input tensors.

The episode rules (auto-reset, episode counters, the final observation of a truncated episode)
live in `torchbeast.core.episodes.EpisodeStream`; this module only makes the env and turns each
record into the `[1, 1, ...]` tensors (time and batch dims of 1) of a rollout row (see
`torchbeast.core.rollout`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from torchbeast.core.episodes import EpisodeStream, StepRecord
from torchbeast.envs.cue_memory import ENV_ID as CUE_MEMORY_ID
from torchbeast.envs.cue_memory import CueMemoryEnv
from torchbeast.envs.position_task import ENV_IDS as POSITION_TASK_IDS
from torchbeast.envs.position_task import ZERO_POS_ENV_ID, PositionTaskEnv

Step = Dict[str, Any]


def create_env(env_id: str, seed: Optional[int] = None, pos_noise: float = 0.0, impl: str = "fast") -> Any:
    """Makes the env for `--env`: a Memory Maze id, or one of the test tasks (CueMemory, PositionTask)."""
    if env_id == CUE_MEMORY_ID:
        return CueMemoryEnv(seed=seed, pos_noise=pos_noise)
    if env_id in POSITION_TASK_IDS:
        return PositionTaskEnv(seed=seed, pos_noise=pos_noise, zero_positions=env_id == ZERO_POS_ENV_ID)
    from torchbeast.envs import make_env  # imports MuJoCo: only when a maze is wanted

    return make_env(env_id, seed=seed, pos_noise=pos_noise, impl=impl)


def observation_shapes(env_id: str) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """Key -> (shape, dtype name) of `env_id`'s observations, without building the env."""
    if env_id == CUE_MEMORY_ID:
        return CueMemoryEnv.observation_shapes()
    if env_id in POSITION_TASK_IDS:
        return PositionTaskEnv.observation_shapes()
    from torchbeast.envs import observation_shapes as maze_observation_shapes

    return maze_observation_shapes(env_id)


def env_has_positions(env_id: str) -> bool:
    """Whether `env_id` gives position/heading observations, without building the env."""
    return "position" in observation_shapes(env_id)


def _as_tensor(value: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(value)).view(1, 1, *np.shape(value))


def _observation_tensors(observation: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    return {key: _as_tensor(value) for key, value in observation.items()}


class Environment:
    """Steps an env through an `EpisodeStream`, giving each step as `[1, 1, ...]` agent inputs.

    A step holds the observation keys, the record's reward, done, truncated, episode_step and
    episode_return, `last_action` (the action passed to `step`, 0 first) and, on a truncated
    step only, `final_observation` (a dict of observation tensors).
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self.stream = EpisodeStream(env)

    def initial(self) -> Step:
        """The first step of the stream (seed the env when making it: a seed here rebuilds a maze)."""
        return self._step(self.stream.initial(), 0)

    def step(self, action: int) -> Step:
        return self._step(self.stream.step(action), action)

    @staticmethod
    def _step(record: StepRecord, last_action: int) -> Step:
        step: Step = _observation_tensors(record["observation"])
        step.update(
            reward=torch.tensor(record["reward"], dtype=torch.float32).view(1, 1),
            done=torch.tensor(record["done"]).view(1, 1),
            truncated=torch.tensor(record["truncated"]).view(1, 1),
            episode_step=torch.tensor(record["episode_step"], dtype=torch.int32).view(1, 1),
            episode_return=torch.tensor(record["episode_return"], dtype=torch.float32).view(1, 1),
            last_action=torch.tensor(last_action, dtype=torch.int64).view(1, 1),
        )
        if record["final_observation"] is not None:
            step["final_observation"] = _observation_tensors(record["final_observation"])
        return step

    def close(self) -> None:
        self.stream.close()
