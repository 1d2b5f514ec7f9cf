"""The rollout contract: what an actor step holds, how rollouts are laid out, who computes what.

Both actor paths produce exactly this layout: MonoBeast's actor processes (monobeast.py) and
PolyBeast's C++ actor pool (libtorchbeast/core/actor_pool.h, whose key names a test checks
against the ones here). Row t of a rollout holds:

    observation keys   frame, and position/heading/noisy_position for ExtraObs ids (top level)
    reward, done, truncated, episode_step, episode_return
                       the env's step record t (see torchbeast.core.episodes)
    last_action        the action taken before step t (0 on the first step of an actor's stream)
    action, policy_logits, baseline
                       the agent's outputs computed on step t (action is taken at step t)
    truncation_value   on a truncated step, the agent's value of the cut episode's true final
                       observation (a time limit is not a terminal state); 0 on other steps

A rollout is T + 1 consecutive rows of one actor's stream; row 0 repeats row T of the previous
rollout, and `initial_agent_state` is the agent state before row 0. A batch stacks B rollouts
along dim 1 ([T + 1, B, ...]). The learner learns the T transitions from row t (with action t)
to row t + 1 (with its reward and done) and bootstraps from row T's value.

The truncation value is computed by `agent_step`, for both paths: the actor hands the step's
`final_observation` to the agent together with the step.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from torchbeast.core.environment import observation_shapes
from torchbeast.envs.memory_maze import NUM_ACTIONS
from torchbeast.models import AgentState, MemoryAgent

# The env's step record fields a row holds (besides the observation keys), and the actor's.
RECORD_KEYS = ("reward", "done", "truncated", "episode_step", "episode_return")
ACTOR_KEYS = ("last_action",)
# The agent's outputs a row holds.
OUTPUT_KEYS = ("action", "policy_logits", "baseline", "truncation_value")
# Agent inputs that are not stored in rollouts.
FINAL_OBSERVATION = "final_observation"

Spec = Dict[str, Tuple[Tuple[int, ...], torch.dtype]]


def step_spec(env_id: str) -> Spec:
    """Key -> (shape, dtype) of one row for `env_id`, without building the env."""
    spec: Spec = {key: (shape, getattr(torch, dtype)) for key, (shape, dtype) in observation_shapes(env_id).items()}
    spec.update(
        reward=((), torch.float32),
        done=((), torch.bool),
        truncated=((), torch.bool),
        episode_step=((), torch.int32),
        episode_return=((), torch.float32),
        last_action=((), torch.int64),
        action=((), torch.int64),
        policy_logits=((NUM_ACTIONS,), torch.float32),
        baseline=((), torch.float32),
        truncation_value=((), torch.float32),
    )
    return spec


def flatten_step(step: Dict[str, Any]) -> Dict[str, Any]:
    """A step as the C++ actor pool nests it ({"observation": {...}, ...}) -> a row's flat keys."""
    flat = dict(step["observation"])
    flat.update((key, value) for key, value in step.items() if key != "observation")
    return flat


def agent_step(
    model: MemoryAgent, inputs: Dict[str, Any], agent_state: AgentState
) -> Tuple[Dict[str, torch.Tensor], AgentState]:
    """The agent's outputs on one step of B actors ([1, B, ...] inputs) and its next state.

    Adds "truncation_value": for the actors whose step is truncated, the baseline of the cut
    episode's last transition as if it had gone on (its final observation, that step's reward
    and last action, not done, from the agent state before this step's reset); 0 for the others.
    `inputs[FINAL_OBSERVATION]`, when present, holds the final observations (any values on rows
    that are not truncated).
    """
    outputs, next_state = model(inputs, agent_state)
    truncation_value = torch.zeros_like(outputs["baseline"])
    final_observation = inputs.get(FINAL_OBSERVATION)
    if final_observation is not None:
        rows = inputs["truncated"][0].nonzero().flatten()
        if len(rows):
            final_inputs = {key: value[:, rows] for key, value in final_observation.items()}
            final_inputs.update(reward=inputs["reward"][:, rows], last_action=inputs["last_action"][:, rows],
                                done=torch.zeros_like(inputs["done"][:, rows]))
            state = tuple(s[:, rows] for s in agent_state)
            final_outputs, _ = model(final_inputs, state, sample_actions=False)
            truncation_value[:, rows] = final_outputs["baseline"]
    outputs["truncation_value"] = truncation_value
    return outputs, next_state
