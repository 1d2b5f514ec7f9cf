"""impl="fast" and "fast_v1" against impl="upstream": same seeds and actions, identical trajectories.

Rewards, positions, headings, noisy positions, layouts, frames and episode ends are compared
exactly (np.array_equal). A random policy almost never reaches a target, so the main test replays
actions from a scripted shortest-path controller that reaches several, and checks that it did.
Episodes are shortened (the composer env's time limit, on both sides alike) so that several
natural episode ends and resets fit in a few hundred steps.
"""
from __future__ import annotations

import collections
import os
from typing import Optional

import numpy as np
import pytest

from torchbeast.envs import env_spec, make_env
from torchbeast.envs.memory_maze import _build_dm_env, _composer_env
from torchbeast.envs.native_path import NativePath

EXTRA_9 = "memory_maze:MemoryMaze-9x9-ExtraObs-v0"

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


def _scripted_actions(env_id: str, seed: int, steps: int, reset_every: Optional[int], episode_steps: int) -> list:
    """Actions of the scripted controller over the episodes `_trajectory` will replay them in."""
    dm_env = _build_dm_env(env_spec(env_id), seed)
    composer_env = _composer_env(dm_env)
    composer_env._time_limit = episode_steps * composer_env.control_timestep() - 1e-3
    native = NativePath(dm_env)  # Only to plan quicker.
    try:
        timestep, since_reset, actions = native.reset(), 0, []
        for _ in range(steps):
            if timestep.last() or since_reset == reset_every:
                timestep, since_reset = native.reset(), 0
            actions.append(_scripted_action(timestep.observation))
            timestep = native.step(actions[-1])
            since_reset += 1
        return actions
    finally:
        native.close()
        dm_env.close()


def _shorten_episodes(env, episode_steps):
    """Make `env`'s episodes end after `episode_steps` steps, as composer ends them at its time limit."""
    composer_env = _composer_env(env._dm_env)
    composer_env._time_limit = episode_steps * composer_env.control_timestep() - 1e-3


def _trajectory(env_id, impl, seed, actions, reset_every=None, pos_noise=0.25, episode_steps=None):
    """Stacked observations, rewards, end flags and layouts of one env under `actions`.

    A reset follows every episode end, and every `reset_every` steps into an episode.
    """
    with make_env(env_id, seed=seed, pos_noise=pos_noise, impl=impl) as env:
        if episode_steps:
            _shorten_episodes(env, episode_steps)
        obs, _ = env.reset()
        steps = [dict(obs, reward=0.0, ended=False)]
        layouts = [env.maze_layout]
        ended, since_reset = False, 0
        for action in actions:
            if ended or (reset_every and since_reset == reset_every):
                obs, _ = env.reset()
                steps.append(dict(obs, reward=0.0, ended=False))
                layouts.append(env.maze_layout)
                since_reset = 0
            obs, reward, terminated, truncated, _ = env.step(action)
            ended = terminated or truncated
            since_reset += 1
            steps.append(dict(obs, reward=reward, ended=ended))
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


@pytest.fixture(scope="module")
def scripted_9x9():
    """Upstream's trajectory under scripted actions: 3 episodes of 80 steps."""
    seed = 0
    actions = _scripted_actions(EXTRA_9, seed, steps=240, reset_every=None, episode_steps=80)
    upstream = _trajectory(EXTRA_9, "upstream", seed, actions, episode_steps=80)
    return seed, actions, upstream


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["fast", "fast_v1"])
def test_fast_equals_upstream_with_targets_reached_across_episodes(scripted_9x9, impl):
    seed, actions, upstream = scripted_9x9
    assert upstream["reward"].sum() >= 3  # The premise: targets were reached,
    assert upstream["ended"].sum() >= 3  # and episodes ended at their time limit.
    fast = _trajectory(EXTRA_9, impl, seed, actions, episode_steps=80)
    _assert_identical(upstream, fast)


@pytest.mark.slow
@pytest.mark.parametrize("env_id, impl", [
    ("memory_maze:MemoryMaze-11x11-ExtraObs-v0", "fast"),
    ("memory_maze:MemoryMaze-13x13-ExtraObs-v0", "fast"),
    ("memory_maze:MemoryMaze-15x15-ExtraObs-v0", "fast"),
    ("memory_maze:MemoryMaze-9x9-6CL-v0", "fast"),  # Recreates its targets at every reset.
])
def test_fast_equals_upstream_random_actions_across_episodes(env_id, impl):
    actions = np.random.default_rng(5).integers(0, 6, size=30)
    upstream = _trajectory(env_id, "upstream", 11, actions, episode_steps=15)
    fast = _trajectory(env_id, impl, 11, actions, episode_steps=15)
    assert upstream["ended"].sum() == 2
    _assert_identical(upstream, fast)


def test_two_fast_envs_in_one_thread_render_their_own_frames():
    """Each env renders in its own OpenGL context, made current on the calling thread per frame."""
    actions = np.random.default_rng(7).integers(0, 6, size=6)
    with make_env(EXTRA_9, seed=1, impl="fast") as first, make_env(EXTRA_9, seed=2, impl="fast") as second:
        frames = [[first.reset()[0]["frame"]], [second.reset()[0]["frame"]]]
        for action in actions:
            frames[0].append(first.step(action)[0]["frame"])
            frames[1].append(second.step(action)[0]["frame"])
    for seed, got in zip((1, 2), frames):
        with make_env(EXTRA_9, seed=seed, impl="upstream") as alone:
            expected = [alone.reset()[0]["frame"]] + [alone.step(action)[0]["frame"] for action in actions]
        assert np.array_equal(np.stack(got), np.stack(expected))


def test_fast_path_is_scoped_to_its_own_env():
    from dm_control.composer.observation.observable import mjcf as mjcf_observable
    from dm_control.locomotion.props import target_sphere

    original_update = target_sphere.TargetSphere._update_activation
    original_callable = mjcf_observable.MJCFCamera._callable
    with make_env("MemoryMaze-9x9-v0", seed=0, impl="fast_v1") as fast, \
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
