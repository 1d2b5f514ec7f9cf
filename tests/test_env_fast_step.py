"""impl="fast" against impl="upstream": same seeds and actions must give identical trajectories.

Rewards, positions, headings, noisy positions, layouts and frames are compared exactly
(np.array_equal). A random policy almost never reaches a target, so the main test replays
actions from a scripted shortest-path controller that reaches several, and checks that it did.
"""
from __future__ import annotations

import collections
import os

import numpy as np
import pytest

from torchbeast.envs import env_spec, make_env
from torchbeast.envs.fast_path import install_fast_path
from torchbeast.envs.memory_maze import _build_dm_env, _composer_env

os.environ.setdefault("MUJOCO_GL", "osmesa")


def _next_waypoint(layout, position, target):
    """Centre of the next cell on a shortest grid path from `position` to `target` (x, y cells)."""
    start = (int(position[0]), int(position[1]))
    goal = (int(target[0]), int(target[1]))
    if start == goal:
        return np.asarray(target, dtype=np.float64)
    previous = {start: None}
    queue = collections.deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            break
        x, y = cell
        for nxt in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            inside = 0 <= nxt[0] < layout.shape[1] and 0 <= nxt[1] < layout.shape[0]
            if inside and layout[nxt[1], nxt[0]] and nxt not in previous:
                previous[nxt] = cell
                queue.append(nxt)
    cell = goal
    while previous.get(cell) not in (start, None):
        cell = previous[cell]
    return np.asarray(cell, dtype=np.float64) + 0.5


def _scripted_action(obs) -> int:
    """Turn towards the next waypoint (memory_maze's raw ExtraObs observation), then go."""
    waypoint = _next_waypoint(obs["maze_layout"], obs["agent_pos"], obs["target_pos"])
    to_go, heading = waypoint - obs["agent_pos"], obs["agent_dir"]
    angle = np.arctan2(heading[0] * to_go[1] - heading[1] * to_go[0], heading @ to_go)
    if abs(angle) > 0.5:
        return 2 if angle > 0 else 3  # left / right
    if abs(angle) > 0.15:
        return 4 if angle > 0 else 5  # forward+left / forward+right
    return 1  # forward


def _scripted_actions(env_id: str, seed: int, steps: int) -> list:
    dm_env = _build_dm_env(env_spec(env_id), seed)
    fast_path = install_fast_path(_composer_env(dm_env))  # Only to plan quicker.
    try:
        timestep = dm_env.reset()
        actions = []
        for _ in range(steps):
            actions.append(_scripted_action(timestep.observation))
            timestep = dm_env.step(actions[-1])
        return actions
    finally:
        fast_path.close()
        dm_env.close()


def _trajectory(env_id, impl, seed, actions, reset_every=None, pos_noise=0.25):
    """Stacked observations, rewards, end flags and layouts of one env under `actions`."""
    with make_env(env_id, seed=seed, pos_noise=pos_noise, impl=impl) as env:
        obs, _ = env.reset()
        steps = [dict(obs, reward=0.0, ended=False)]
        layouts = [env.maze_layout]
        for t, action in enumerate(actions):
            if reset_every and t and t % reset_every == 0:
                obs, _ = env.reset()
                steps.append(dict(obs, reward=0.0, ended=False))
                layouts.append(env.maze_layout)
            obs, reward, terminated, truncated, _ = env.step(action)
            steps.append(dict(obs, reward=reward, ended=terminated or truncated))
    out = {key: np.stack([step[key] for step in steps]) for key in steps[0]}
    out["layouts"] = None if layouts[0] is None else np.stack(layouts)
    return out


def _assert_identical(upstream, fast):
    assert upstream.keys() == fast.keys()
    for key in upstream:
        if upstream[key] is None:
            assert fast[key] is None
        else:
            assert np.array_equal(upstream[key], fast[key]), f"{key} differs"


@pytest.mark.slow
def test_fast_equals_upstream_with_targets_reached():
    env_id, seed = "memory_maze:MemoryMaze-9x9-ExtraObs-v0", 0
    actions = _scripted_actions(env_id, seed, steps=300)
    upstream = _trajectory(env_id, "upstream", seed, actions)
    fast = _trajectory(env_id, "fast", seed, actions)
    assert upstream["reward"].sum() >= 3  # The premise: targets were reached.
    _assert_identical(upstream, fast)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", [
    "memory_maze:MemoryMaze-15x15-ExtraObs-v0",
    "memory_maze:MemoryMaze-9x9-6CL-v0",  # Recreates its targets at every reset.
])
def test_fast_equals_upstream_random_actions_across_resets(env_id):
    actions = np.random.default_rng(5).integers(0, 6, size=150)
    upstream = _trajectory(env_id, "upstream", 11, actions, reset_every=75)
    fast = _trajectory(env_id, "fast", 11, actions, reset_every=75)
    _assert_identical(upstream, fast)


def test_fast_path_is_scoped_to_its_own_env():
    from dm_control.composer.observation.observable import mjcf as mjcf_observable
    from dm_control.locomotion.props import target_sphere

    original_update = target_sphere.TargetSphere._update_activation
    original_callable = mjcf_observable.MJCFCamera._callable
    with make_env("MemoryMaze-9x9-v0", seed=0, impl="fast") as fast, \
            make_env("MemoryMaze-9x9-v0", seed=0, impl="upstream") as upstream:
        fast.reset()
        upstream.reset()
        fast_targets = _composer_env(fast._dm_env).task._targets
        upstream_targets = _composer_env(upstream._dm_env).task._targets
        assert all("after_substep" in vars(target) for target in fast_targets)
        assert not any("after_substep" in vars(target) for target in upstream_targets)
        assert target_sphere.TargetSphere._update_activation is original_update
        assert mjcf_observable.MJCFCamera._callable is original_callable
        actions = np.random.default_rng(6).integers(0, 6, size=30)
        for action in actions:
            fast_obs = fast.step(action)[0]
            upstream_obs = upstream.step(action)[0]
            assert np.array_equal(fast_obs["frame"], upstream_obs["frame"])
