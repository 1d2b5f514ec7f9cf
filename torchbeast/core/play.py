"""Plays one episode with a policy on a given seed: the episode loop of `--mode test` and of
`python -m torchbeast.evaluate`.

Episode i of an evaluation is played in a fresh env made with seed S + i, so every policy meets
the same mazes whatever process plays it and in whatever order. A trained agent samples its
actions (as in training), with its LSTM state carried from step to step; a fixed seed makes the
whole episode repeatable.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Protocol, Tuple

import numpy as np
import torch

from torchbeast.core.checkpoint import load_checkpoint
from torchbeast.core.environment import Environment, Step, create_env, env_has_positions
from torchbeast.core.runs import build_model
from torchbeast.envs.memory_maze import NUM_ACTIONS
from torchbeast.errors import ConfigError
from torchbeast.models import MemoryAgent


class Policy(Protocol):
    def start(self, seed: int) -> None:
        """Called before each episode's first step."""

    def act(self, step: Step) -> int:
        """The action for `step` (a dict of `[1, 1, ...]` tensors from `Environment`)."""


class AgentPolicy:
    """A trained agent: actions sampled from its policy, LSTM state carried across the episode."""

    def __init__(self, model: MemoryAgent) -> None:
        self.model = model.eval()
        self.state: Any = None

    def start(self, seed: int) -> None:
        torch.manual_seed(seed)  # the action samples
        self.state = self.model.initial_state(1)

    def act(self, step: Step) -> int:
        with torch.no_grad():
            outputs, self.state = self.model(step, self.state)
        return int(outputs["action"].item())


class RandomPolicy:
    """Uniformly random actions: the floor of the evaluation table."""

    def __init__(self, num_actions: int = NUM_ACTIONS) -> None:
        self.num_actions = num_actions
        self.rng = np.random.default_rng(0)

    def start(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, step: Step) -> int:
        return int(self.rng.integers(self.num_actions))


@dataclasses.dataclass
class Episode:
    """How one episode went; frames and positions only when recorded."""

    episode_return: float
    length: int
    frames: List[np.ndarray] = dataclasses.field(default_factory=list)
    positions: List[np.ndarray] = dataclasses.field(default_factory=list)
    maze_layout: Optional[np.ndarray] = None


class _OneEpisode:
    """Passes an env through, except that a reset after the first returns the last observation.

    `EpisodeStream` resets the env right after an episode's last step; we stop there, so that
    reset (about a second for Memory Maze: a new maze) would be wasted.
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self._last_observation: Any = None

    def reset(self, **kwargs: Any) -> Tuple[Any, Dict[str, Any]]:
        if self._last_observation is not None:
            return self._last_observation, {}
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> Tuple[Any, float, bool, bool, Dict[str, Any]]:
        result = self.env.step(action)
        self._last_observation = result[0]
        return result

    def close(self) -> None:
        self.env.close()


def _observation_of(step: Step) -> Step:
    """The observation a step shows; for a cut episode's last step, the one before the cut."""
    return step.get("final_observation", step)


def play_episode(env_id: str, policy: Policy, seed: int, *, pos_noise: float = 0.0, impl: str = "fast",
                 record: bool = False, max_steps: Optional[int] = None) -> Episode:
    """Plays one episode of `env_id` made with `seed`; `max_steps` cuts it short (for quick checks)."""
    env = create_env(env_id, seed=seed, pos_noise=pos_noise, impl=impl)
    environment = Environment(_OneEpisode(env))
    try:
        step = environment.initial()
        policy.start(seed)
        episode = Episode(0.0, 0, maze_layout=getattr(env, "maze_layout", None) if record else None)
        while True:
            if record:
                observation = _observation_of(step)
                episode.frames.append(observation["frame"][0, 0].numpy())
                if "position" in observation:
                    episode.positions.append(observation["position"][0, 0].numpy())
            if episode.length > 0 and step["done"].item():
                break
            if max_steps is not None and episode.length >= max_steps:
                break
            step = environment.step(policy.act(step))
            episode.length = int(step["episode_step"].item())
            episode.episode_return = float(step["episode_return"].item())
    finally:
        environment.close()
    return episode


def load_agent(path: str) -> Tuple[MemoryAgent, Dict[str, Any]]:
    """The agent saved at `path` and the checkpoint it came from; ConfigError if it cannot be rebuilt."""
    state = load_checkpoint(path)
    model = build_model(state["model_config"])
    try:
        model.load_state_dict(state["model_state_dict"])
    except RuntimeError as e:
        raise ConfigError(f"checkpoint {path} does not match its model config: "
                          f"{str(e).splitlines()[0]}") from None
    return model.eval(), state


def check_agent_fits_env(state: Dict[str, Any], env_id: str, path: str) -> None:
    """An agent with a position embedding needs an env with positions."""
    posemb = state["model_config"].get("posemb", "none")
    if posemb != "none" and not env_has_positions(env_id):
        raise ConfigError(f"checkpoint {path} was trained with --posemb {posemb}: --env {env_id} has no "
                          "positions (use an ExtraObs id)")
