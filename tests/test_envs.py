"""Tests of torchbeast.envs: ids, rendering choice, the Gymnasium-API wrapper, seeding, video.

They build real Memory Maze envs (OSMesa unless MUJOCO_GL is set) and step a few hundred times.
Every env is closed by its fixture: dm_control's renderer raises at interpreter exit otherwise.
"""
from __future__ import annotations

import os
import sys

import dm_env
import numpy as np
import pytest

from torchbeast.envs import (
    MEMORY_MAZE_IDS,
    env_spec,
    has_positions,
    make_env,
    observation_shapes,
    rendering,
)
from torchbeast.envs.memory_maze import _composer_env, _gym_registry, episode_end
from torchbeast.envs.video import write_episode_video
from torchbeast.errors import ConfigError

os.environ.setdefault("MUJOCO_GL", "osmesa")

PLAIN_ID = "memory_maze:MemoryMaze-9x9-v0"
EXTRA_ID = "memory_maze:MemoryMaze-9x9-ExtraObs-v0"


def _random_actions(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 6, size=n)


@pytest.fixture(scope="module")
def plain_env():
    env = make_env(PLAIN_ID, seed=0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def extra_env():
    env = make_env(EXTRA_ID, seed=0, pos_noise=0.5)
    yield env
    env.close()


# --- ids, without building an env --------------------------------------------------------------

def test_ids_match_memory_maze_registration():
    registry = _gym_registry()
    registered = {name for name in registry if name.startswith("MemoryMaze-")}
    assert {env_id.split(":", 1)[1] for env_id in MEMORY_MAZE_IDS} == registered
    for env_id in MEMORY_MAZE_IDS:
        spec = env_spec(env_id)
        kwargs = registry[spec.registered_name].entry_point.keywords
        assert spec.frame_size == kwargs.get("camera_resolution", 64), env_id
        assert spec.control_freq == kwargs.get("control_freq", 4), env_id
        assert spec.has_positions == (kwargs.get("global_observables", False)
                                      and not kwargs.get("image_only_obs", False)), env_id


def test_static_facts():
    assert has_positions("memory_maze:MemoryMaze-15x15-ExtraObs-v0")
    assert not has_positions(PLAIN_ID)
    assert env_spec("MemoryMaze-11x11-v0").env_id == "memory_maze:MemoryMaze-11x11-v0"
    assert env_spec("MemoryMaze-15x15-HiFreq-v0").max_episode_steps == 40000
    assert [env_spec(f"MemoryMaze-{n}x{n}-v0").max_episode_steps for n in (9, 11, 13, 15)] == [
        1000, 2000, 3000, 4000]
    assert observation_shapes(PLAIN_ID) == {"frame": ((3, 64, 64), "uint8")}
    assert set(observation_shapes(EXTRA_ID)) == {"frame", "position", "heading", "noisy_position"}
    assert observation_shapes("MemoryMaze-9x9-Top-v0")["frame"][0] == (3, 256, 256)


@pytest.mark.parametrize("bad_id", ["MemoryMaze-10x10-v0", "CartPole-v1", "memory_maze:MemoryMaze-9x9-v1"])
def test_unknown_id_is_a_one_line_config_error(bad_id):
    with pytest.raises(ConfigError) as info:
        make_env(bad_id)
    message = str(info.value)
    assert "\n" not in message
    assert bad_id in message and PLAIN_ID in message and "MemoryMaze-15x15-ExtraObs-v0" in message


def test_bad_impl_and_noise_are_config_errors():
    with pytest.raises(ConfigError, match="impl"):
        make_env(PLAIN_ID, impl="turbo")
    with pytest.raises(ConfigError, match="pos_noise"):
        make_env(PLAIN_ID, pos_noise=-1.0)


def test_episode_end_maps_time_limit_to_truncation():
    last = dm_env.StepType.LAST
    assert episode_end(dm_env.TimeStep(dm_env.StepType.MID, 0.0, 1.0, None)) == (False, False)
    assert episode_end(dm_env.TimeStep(last, 0.0, 1.0, None)) == (False, True)  # time limit
    assert episode_end(dm_env.TimeStep(last, 0.0, 0.0, None)) == (True, False)  # terminal


# --- rendering backend choice ------------------------------------------------------------------

def test_rendering_explicit_choice_wins(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.setattr(rendering, "nvidia_gpu_present", lambda: True)
    assert rendering.configure_rendering() == "osmesa"


@pytest.mark.parametrize("gpu, expected", [(True, "egl"), (False, "osmesa")])
def test_rendering_default_follows_gpu(monkeypatch, gpu, expected):
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.delitem(sys.modules, "dm_control", raising=False)
    monkeypatch.setattr(rendering, "nvidia_gpu_present", lambda: gpu)
    monkeypatch.setattr(rendering.ctypes.util, "find_library", lambda name: f"lib{name}.so")
    assert rendering.configure_rendering() == expected
    assert os.environ["MUJOCO_GL"] == expected


def test_osmesa_renders_on_the_calling_thread_unless_the_user_says(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.setattr(rendering.ctypes.util, "find_library", lambda name: f"lib{name}.so")
    monkeypatch.delenv("LP_NUM_THREADS", raising=False)
    rendering.configure_rendering()
    assert os.environ["LP_NUM_THREADS"] == "0"
    monkeypatch.setenv("LP_NUM_THREADS", "4")
    rendering.configure_rendering()
    assert os.environ["LP_NUM_THREADS"] == "4"


@pytest.mark.parametrize("backend, package", [("osmesa", "libosmesa6"), ("egl", "libegl1")])
def test_rendering_missing_library_names_the_package(monkeypatch, backend, package):
    monkeypatch.setenv("MUJOCO_GL", backend)
    monkeypatch.setattr(rendering.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(ConfigError, match=package):
        rendering.configure_rendering()


# --- the wrapper on real envs ------------------------------------------------------------------

def _check_observation(obs, env_id):
    shapes = observation_shapes(env_id)
    assert set(obs) == set(shapes)
    for key, (shape, dtype) in shapes.items():
        assert obs[key].shape == shape and obs[key].dtype == np.dtype(dtype), key


def test_api_types_and_shapes(plain_env, extra_env):
    for env, env_id in ((plain_env, PLAIN_ID), (extra_env, EXTRA_ID)):
        assert env.num_actions == 6 and env.maze_size == 9 and env.max_episode_steps == 1000
        assert env.env_id == env_id
        obs, info = env.reset()
        assert isinstance(info, dict)
        _check_observation(obs, env_id)
        for action in range(6):
            obs, reward, terminated, truncated, info = env.step(np.int64(action))
            _check_observation(obs, env_id)
            assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
            assert isinstance(info, dict) and not (terminated or truncated)
    assert plain_env.has_positions is False and plain_env.maze_layout is None
    assert extra_env.has_positions is True
    assert extra_env.maze_layout.shape == (9, 9) and extra_env.maze_layout.dtype == np.uint8
    with pytest.raises(ValueError, match="action"):
        plain_env.step(6)


def test_positions_lie_in_free_cells(extra_env):
    obs, _ = extra_env.reset()
    for action in _random_actions(1, 100):
        x, y = obs["position"] * extra_env.maze_size
        assert 0.0 <= obs["position"].min() and obs["position"].max() <= 1.0
        assert extra_env.maze_layout[int(y), int(x)] == 1  # row = y, column = x
        assert abs(np.linalg.norm(obs["heading"]) - 1.0) < 1e-4
        obs, *_ = extra_env.step(action)


def test_truncation_at_time_limit(plain_env):
    plain_env.reset()
    # Shorten this episode to 5 steps of 0.25 s (composer checks physics time >= its limit).
    composer = _composer_env(plain_env._dm_env)
    original_limit = composer._time_limit
    composer._time_limit = 5 * composer.control_timestep() - 1e-3
    ends = [plain_env.step(1)[2:4] for _ in range(5)]
    assert ends == [(False, False)] * 4 + [(False, True)]
    with pytest.raises(RuntimeError, match="reset"):
        plain_env.step(0)
    plain_env.reset()
    composer._time_limit = original_limit


def test_position_noise_statistics(extra_env):
    obs, _ = extra_env.reset()
    noise = []
    for action in _random_actions(2, 300):
        noise.append((obs["noisy_position"] - obs["position"]) * extra_env.maze_size)
        obs, *_ = extra_env.step(action)
    noise = np.asarray(noise, dtype=np.float64).ravel()  # 600 draws, std 0.5 cells
    assert abs(noise.mean()) < 4 * 0.5 / np.sqrt(noise.size)
    assert 0.44 < noise.std() < 0.56


def _rollout(env, actions, seed=None):
    obs, _ = env.reset(seed=seed)
    trajectory = [obs]
    for action in actions:
        trajectory.append(env.step(action)[0])
    return {key: np.stack([o[key] for o in trajectory]) for key in trajectory[0]}


def test_same_seed_same_mazes_noise_and_frames(extra_env):
    actions = _random_actions(3, 40)
    with make_env(EXTRA_ID, seed=7, pos_noise=0.3) as env:
        first = _rollout(env, actions)
        first_layout = env.maze_layout.copy()
        second_episode = _rollout(env, actions)
    # extra_env was built with another seed and noise level: reset(seed=...) restarts it at 7.
    extra_env.pos_noise = 0.3
    try:
        again = _rollout(extra_env, actions, seed=7)
        np.testing.assert_array_equal(extra_env.maze_layout, first_layout)
        again_second = _rollout(extra_env, actions)
    finally:
        extra_env.pos_noise = 0.5
    for key in first:
        assert np.array_equal(first[key], again[key]), key
        assert np.array_equal(second_episode[key], again_second[key]), key
    assert not np.array_equal(first["frame"], second_episode["frame"])  # A new maze each episode.


def test_gym_make_as_in_the_readme_works():
    import gym

    # Exactly as the seed README writes it, env checker included (it needs numpy<2: np.bool8).
    env = gym.make("memory_maze:MemoryMaze-9x9-v0")
    try:
        assert env.reset().shape == (64, 64, 3)
        obs, reward, done, info = env.step(1)
        assert obs.shape == (64, 64, 3) and not done
    finally:
        env.close()


# --- video -------------------------------------------------------------------------------------

def _video_frames_and_size(path):
    """(frame count, (width, height)) of an MP4, read back with imageio's ffmpeg plugin."""
    import imageio.v2 as imageio

    # count_frames() rather than iterating: the iterator leaves ffmpeg's pipes to the GC.
    reader = imageio.get_reader(path)
    try:
        return reader.count_frames(), tuple(reader.get_meta_data()["size"])
    finally:
        reader.close()


def test_episode_video_round_trip(tmp_path, extra_env):
    trajectory = _rollout(extra_env, _random_actions(4, 11))
    path = write_episode_video(tmp_path / "episode.mp4", list(trajectory["frame"]),
                               positions=trajectory["position"], maze_layout=extra_env.maze_layout)
    count, (width, height) = _video_frames_and_size(path)
    assert count == 12
    assert height == 256 and width > 256  # 4x view plus the map panel.

    hwc = [np.transpose(frame, (1, 2, 0)) for frame in trajectory["frame"][:5]]
    count, size = _video_frames_and_size(write_episode_video(tmp_path / "view.mp4", hwc, fps=4))
    assert (count, size) == (5, (256, 256))
