"""From a Gymnasium-API env to the per-step tensors an IMPALA actor writes into its rollout.

An actor sees one stream of steps across episodes: after the last step of an episode the env is
reset at once and the step carries the new episode's first observation with `done=True`. The
finished episode's return and length ride along on that step for logging. When an episode was
cut by a time limit (`truncated=True`), the true final observation is handed back separately so
the actor can bootstrap from its value: a time limit is not a terminal state.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from torchbeast.envs.cue_memory import ENV_ID as CUE_MEMORY_ID
from torchbeast.envs.cue_memory import CueMemoryEnv

Step = Dict[str, torch.Tensor]


def create_env(env_id: str, seed: Optional[int] = None, pos_noise: float = 0.0, impl: str = "fast") -> Any:
    """Makes the env for `--env`: a Memory Maze id, or the CueMemory test task."""
    if env_id == CUE_MEMORY_ID:
        return CueMemoryEnv(seed=seed, pos_noise=pos_noise)
    from torchbeast.envs import make_env  # imports MuJoCo: only when a maze is wanted

    return make_env(env_id, seed=seed, pos_noise=pos_noise, impl=impl)


def env_has_positions(env_id: str) -> bool:
    """Whether `env_id` gives position/heading observations, without building the env."""
    if env_id == CUE_MEMORY_ID:
        return True
    from torchbeast.envs import has_positions

    return has_positions(env_id)


def frame_shape(env_id: str) -> Tuple[int, ...]:
    """(3, H, W) of `env_id`'s frames, without building the env."""
    if env_id == CUE_MEMORY_ID:
        return (3, 64, 64)
    from torchbeast.envs import observation_shapes

    return tuple(observation_shapes(env_id)["frame"][0])


def _as_tensor(value: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(value)).view(1, 1, *np.shape(value))


class Environment:
    """Steps an env with auto-reset, giving `[1, 1, ...]` tensors (time and batch dims of 1)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.episode_return = 0.0
        self.episode_step = 0

    def _step_dict(
        self, obs: Dict[str, np.ndarray], reward: float, done: bool, truncated: bool, last_action: int,
        episode_return: float, episode_step: int,
    ) -> Step:
        out = {key: _as_tensor(value) for key, value in obs.items()}
        out.update(
            reward=torch.tensor(reward, dtype=torch.float32).view(1, 1),
            done=torch.tensor(done).view(1, 1),
            truncated=torch.tensor(truncated).view(1, 1),
            episode_return=torch.tensor(episode_return, dtype=torch.float32).view(1, 1),
            episode_step=torch.tensor(episode_step, dtype=torch.int32).view(1, 1),
            last_action=torch.tensor(last_action, dtype=torch.int64).view(1, 1),
        )
        return out

    def initial(self) -> Step:
        """The first step of the stream (seed the env when making it: a seed here rebuilds a maze)."""
        obs, _ = self.env.reset()
        self.episode_return, self.episode_step = 0.0, 0
        # done=True: the first step of the stream starts an episode (the agent state is fresh).
        return self._step_dict(obs, 0.0, True, False, 0, 0.0, 0)

    def step(self, action: int) -> Tuple[Step, Optional[Dict[str, np.ndarray]]]:
        """Returns the step and, when the episode was truncated, its true final observation."""
        obs, reward, terminated, truncated, _ = self.env.step(action)
        self.episode_step += 1
        self.episode_return += reward
        episode_return, episode_step = self.episode_return, self.episode_step
        done = terminated or truncated
        final_obs = None
        if done:
            if truncated and not terminated:
                final_obs = obs
            obs, _ = self.env.reset()
            self.episode_return, self.episode_step = 0.0, 0
        step = self._step_dict(
            obs, reward, done, truncated and not terminated, action, episode_return, episode_step
        )
        return step, final_obs

    def close(self) -> None:
        self.env.close()
