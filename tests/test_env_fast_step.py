"""impl="fast" and "fast_v1" against impl="upstream": same seeds and actions, identical trajectories.

Rewards, positions, headings, noisy positions, layouts, frames and episode ends are compared
exactly (np.array_equal). A random policy almost never reaches a target, so the 9x9 test replays
actions from a scripted shortest-path controller that reaches several, and checks that it did.
Episodes are shortened (the composer env's time limit, on both sides alike) so that natural
episode ends and resets fit in a few dozen steps. Each upstream trajectory is computed once per
module and shared by the tests that compare with it.
"""
from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
import subprocess
import sys
import textwrap
from typing import Any, Callable

import numpy as np
import pytest

from torchbeast.envs import env_spec, make_env
from torchbeast.envs.memory_maze import _build_dm_env, _composer_env
from torchbeast.envs.native_path import NativePath

EXTRA_9 = "memory_maze:MemoryMaze-9x9-ExtraObs-v0"
EXTRA_15 = "memory_maze:MemoryMaze-15x15-ExtraObs-v0"
SCRIPTED_SEED = 1  # 9x9: the scripted controller reaches 4 targets in 3 episodes of 60 steps.
SCRIPTED_EPISODE_STEPS = 60
RANDOM_SEED = 11
RANDOM_EPISODE_STEPS = 10

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


def _scripted_actions(env_id: str, seed: int, steps: int, episode_steps: int) -> list:
    """Actions of the scripted controller over the episodes `_trajectory` will replay them in."""
    dm_env = _build_dm_env(env_spec(env_id), seed)
    composer_env = _composer_env(dm_env)
    composer_env._time_limit = episode_steps * composer_env.control_timestep() - 1e-3
    native = NativePath(dm_env)  # Only to plan quicker.
    try:
        timestep, actions = native.reset(), []
        for _ in range(steps):
            if timestep.last():
                timestep = native.reset()
            actions.append(_scripted_action(timestep.observation))
            timestep = native.step(actions[-1])
        return actions
    finally:
        native.close()
        dm_env.close()


def _shorten_episodes(env, episode_steps):
    """Make `env`'s episodes end after `episode_steps` steps, as composer ends them at its time limit."""
    composer_env = _composer_env(env._dm_env)
    composer_env._time_limit = episode_steps * composer_env.control_timestep() - 1e-3


def _direct(call: Callable[[], Any]) -> Any:
    return call()


def _on_new_thread(call: Callable[[], Any]) -> Any:
    """Run `call` on a thread of its own (started for it, joined after), re-raising its error."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


def _trajectory(env_id, impl, seed, actions, episode_steps, pos_noise=0.25, run=_direct):
    """Stacked observations, rewards, end flags and layouts of one env under `actions`.

    A reset follows every episode end. `run` makes each reset and step call (e.g. on a new thread).
    Also returns how many of its resets the fast env rendered with the first episode's textures.
    """
    with make_env(env_id, seed=seed, pos_noise=pos_noise, impl=impl) as env:
        _shorten_episodes(env, episode_steps)
        obs, _ = run(env.reset)
        steps = [dict(obs, reward=0.0, ended=False)]
        layouts = [env.maze_layout]
        ended = False
        for action in actions:
            if ended:
                obs, _ = run(env.reset)
                steps.append(dict(obs, reward=0.0, ended=False))
                layouts.append(env.maze_layout)
            obs, reward, terminated, truncated, _ = run(functools.partial(env.step, action))
            ended = terminated or truncated
            steps.append(dict(obs, reward=reward, ended=ended))
        shared_texture_resets = env._native.shared_texture_resets if impl == "fast" else None
    out = {key: np.stack([step[key] for step in steps]) for key in steps[0]}
    out["layouts"] = None if layouts[0] is None else np.stack(layouts)
    return out, shared_texture_resets


def _assert_identical(upstream, fast):
    assert upstream.keys() == fast.keys()
    for key in upstream:
        if upstream[key] is None:
            assert fast[key] is None
        else:
            assert np.array_equal(upstream[key], fast[key]), f"{key} differs"


@pytest.fixture(scope="module")
def scripted_9x9():
    """Scripted actions and upstream's trajectory under them: 3 episodes of 60 steps."""
    actions = _scripted_actions(EXTRA_9, SCRIPTED_SEED, 3 * SCRIPTED_EPISODE_STEPS, SCRIPTED_EPISODE_STEPS)
    upstream, _ = _trajectory(EXTRA_9, "upstream", SCRIPTED_SEED, actions, SCRIPTED_EPISODE_STEPS)
    return actions, upstream


RANDOM_ACTIONS = np.random.default_rng(5).integers(0, 6, size=2 * RANDOM_EPISODE_STEPS)


@functools.lru_cache(maxsize=None)
def _upstream_random(env_id):
    """Upstream's trajectory under RANDOM_ACTIONS: two episodes (one reset), computed once."""
    return _trajectory(env_id, "upstream", RANDOM_SEED, RANDOM_ACTIONS, RANDOM_EPISODE_STEPS)[0]


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["fast", "fast_v1"])
def test_fast_equals_upstream_with_targets_reached_across_episodes(scripted_9x9, impl):
    actions, upstream = scripted_9x9
    assert upstream["reward"].sum() >= 3  # The premise: targets were reached,
    assert upstream["ended"].sum() == 3  # and episodes ended at their time limit.
    fast, shared_texture_resets = _trajectory(EXTRA_9, impl, SCRIPTED_SEED, actions, SCRIPTED_EPISODE_STEPS)
    _assert_identical(upstream, fast)
    if impl == "fast":
        # The texture hand-over ran: the episodes after the first rendered with the textures the
        # first episode uploaded (placeholder textures in their own models), and matched upstream.
        assert shared_texture_resets == 2


@pytest.mark.slow
@pytest.mark.parametrize("env_id, shared_textures", [
    ("memory_maze:MemoryMaze-11x11-ExtraObs-v0", 1),
    ("memory_maze:MemoryMaze-13x13-ExtraObs-v0", 1),
    (EXTRA_15, 1),
    # Recreates its targets, and their textures, at every reset: no texture hand-over.
    ("memory_maze:MemoryMaze-9x9-6CL-v0", 0),
])
def test_fast_equals_upstream_random_actions_across_a_reset(env_id, shared_textures):
    upstream = _upstream_random(env_id)
    fast, shared_texture_resets = _trajectory(env_id, "fast", RANDOM_SEED, RANDOM_ACTIONS, RANDOM_EPISODE_STEPS)
    assert upstream["ended"].sum() == 2
    assert shared_texture_resets == shared_textures
    _assert_identical(upstream, fast)


def test_two_fast_envs_stepped_from_changing_threads_render_their_own_frames(scripted_9x9):
    """Two envs in one process, each call on a new thread: each env makes its OpenGL context
    current on the calling thread per frame (and releases it with EGL, see the next test)."""
    actions, upstream_9 = scripted_9x9
    upstream_15 = _upstream_random(EXTRA_15)
    steps = RANDOM_EPISODE_STEPS
    with make_env(EXTRA_9, seed=SCRIPTED_SEED, pos_noise=0.25, impl="fast") as first, \
            make_env(EXTRA_15, seed=RANDOM_SEED, pos_noise=0.25, impl="fast") as second:
        frames = [[_on_new_thread(first.reset)[0]["frame"]], [_on_new_thread(second.reset)[0]["frame"]]]
        for action_9, action_15 in zip(actions[:steps], RANDOM_ACTIONS[:steps]):
            frames[0].append(_on_new_thread(functools.partial(first.step, action_9))[0]["frame"])
            frames[1].append(_on_new_thread(functools.partial(second.step, action_15))[0]["frame"])
    assert np.array_equal(np.stack(frames[0]), upstream_9["frame"][:steps + 1])
    assert np.array_equal(np.stack(frames[1]), upstream_15["frame"][:steps + 1])


_EGL_THREADS_SCRIPT = textwrap.dedent("""
    import concurrent.futures, functools, sys
    import numpy as np
    from torchbeast.envs import make_env

    def on_new_thread(call):
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(call).result()

    actions = np.random.default_rng(3).integers(0, 6, size=8)
    with make_env(sys.argv[1], seed=4, impl="fast") as threaded, make_env(sys.argv[1], seed=4, impl="fast") as here:
        for episode in range(2):  # The second reset makes new contexts from another thread.
            got, expected = [on_new_thread(threaded.reset)[0]["frame"]], [here.reset()[0]["frame"]]
            for action in actions:
                got.append(on_new_thread(functools.partial(threaded.step, action))[0]["frame"])
                expected.append(here.step(action)[0]["frame"])
            assert np.array_equal(np.stack(got), np.stack(expected)), "frames differ"
            assert np.stack(got).std() > 0, "blank frames"
    print("ok")
""")


def test_fast_env_with_egl_steps_from_one_thread_then_another():
    """EGL refuses a context current on another thread: the env must release it after each call."""
    env = dict(os.environ, MUJOCO_GL="egl", PYOPENGL_PLATFORM="egl")
    result = subprocess.run([sys.executable, "-c", _EGL_THREADS_SCRIPT, EXTRA_9], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_fast_path_is_scoped_to_its_own_env(scripted_9x9):
    """fast_v1 patches its own env's targets and camera only: an upstream env beside it is unchanged."""
    from dm_control.composer.observation.observable import mjcf as mjcf_observable
    from dm_control.locomotion.props import target_sphere

    actions, upstream_trajectory = scripted_9x9
    steps = 5
    original_update = target_sphere.TargetSphere._update_activation
    original_callable = mjcf_observable.MJCFCamera._callable
    with make_env(EXTRA_9, seed=SCRIPTED_SEED, pos_noise=0.25, impl="fast_v1") as fast, \
            make_env(EXTRA_9, seed=SCRIPTED_SEED, pos_noise=0.25, impl="upstream") as upstream:
        fast.reset()
        frames = [upstream.reset()[0]["frame"]]
        fast_targets = _composer_env(fast._dm_env).task._targets
        upstream_targets = _composer_env(upstream._dm_env).task._targets
        assert all("after_substep" in vars(target) for target in fast_targets)
        assert not any("after_substep" in vars(target) for target in upstream_targets)
        assert target_sphere.TargetSphere._update_activation is original_update
        assert mjcf_observable.MJCFCamera._callable is original_callable
        for action in actions[:steps]:
            fast.step(action)
            frames.append(upstream.step(action)[0]["frame"])
    assert np.array_equal(np.stack(frames), upstream_trajectory["frame"][:steps + 1])
