"""--mode test: play episodes with a saved agent, LSTM state carried, optionally recording videos.

Shared by MonoBeast and PolyBeast: both save the same checkpoint format.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Any, Dict, List

import numpy as np
import torch

from torchbeast.core.checkpoint import load_checkpoint
from torchbeast.core.environment import Environment, create_env, env_has_positions
from torchbeast.core.runs import build_model, test_checkpoint_path
from torchbeast.errors import ConfigError

log = logging.getLogger("torchbeast")


class ProgressBar:
    """A one-line text progress bar on stderr (redrawn in place when stderr is a terminal)."""

    def __init__(self, total: int, label: str, width: int = 30) -> None:
        self.total, self.label, self.width = total, label, width
        self.tty = sys.stderr.isatty()
        self._last_draw = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < (0.1 if self.tty else 5.0):
            return
        self._last_draw = now
        filled = int(self.width * done / max(1, self.total))
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total}"
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _episode_frames(step: Dict[str, torch.Tensor]) -> np.ndarray:
    return step["frame"][0, 0].numpy()


def test(flags: argparse.Namespace) -> Dict[str, Any]:
    """Plays --test_episodes episodes; prints and writes test_results.json next to the checkpoint."""
    checkpoint_path = test_checkpoint_path(flags)
    state = load_checkpoint(checkpoint_path)
    run_dir = os.path.dirname(os.path.abspath(checkpoint_path))
    log.info("Testing %s (trained for %d steps) on %s", checkpoint_path, state["step"], flags.env)

    model = build_model(state["model_config"])
    try:
        model.load_state_dict(state["model_state_dict"])
    except RuntimeError as e:
        raise ConfigError(f"checkpoint {checkpoint_path} does not match its model config: "
                          f"{str(e).splitlines()[0]}") from None
    model.eval()
    if state["model_config"]["posemb"] != "none":
        if not env_has_positions(flags.env):
            raise ConfigError(f"checkpoint {checkpoint_path} was trained with --posemb "
                              f"{state['model_config']['posemb']}: --env {flags.env} has no positions "
                              "(use an ExtraObs id)")

    seed = flags.seed if flags.seed is not None else 0
    torch.manual_seed(seed)
    env = Environment(create_env(flags.env, seed=seed, pos_noise=flags.pos_noise, impl=flags.env_impl))
    video_dir = os.path.join(run_dir, "videos")
    returns: List[float] = []
    lengths: List[int] = []
    videos: List[str] = []
    step = env.initial()
    agent_state = model.initial_state(1)
    max_steps = getattr(env.env, "max_episode_steps", None) or 0
    try:
        for episode in range(flags.test_episodes):
            frames: List[np.ndarray] = [_episode_frames(step)]
            positions: List[np.ndarray] = []
            layout = getattr(env.env, "maze_layout", None)
            if "position" in step:
                positions.append(step["position"][0, 0].numpy())
            bar = ProgressBar(max_steps, f"episode {episode + 1}/{flags.test_episodes}")
            t = 0
            while True:
                with torch.no_grad():
                    outputs, agent_state = model(step, agent_state)
                step, _ = env.step(int(outputs["action"].item()))
                t += 1
                if max_steps:
                    bar.update(t)
                if step["done"].item():
                    break
                frames.append(_episode_frames(step))
                if "position" in step:
                    positions.append(step["position"][0, 0].numpy())
            if max_steps:
                bar.update(t, force=True)
                bar.close()
            episode_return = float(step["episode_return"].item())
            returns.append(episode_return)
            lengths.append(int(step["episode_step"].item()))
            print(f"episode {episode + 1}: return {episode_return:g} in {lengths[-1]} steps", flush=True)
            if flags.record:
                from torchbeast.envs.video import write_episode_video

                os.makedirs(video_dir, exist_ok=True)
                path = os.path.join(video_dir, f"episode_{episode + 1:03d}.mp4")
                write_episode_video(path, frames, positions=positions or None, maze_layout=layout)
                videos.append(path)
    finally:
        env.close()

    mean = float(np.mean(returns))
    std = float(np.std(returns))
    print(f"mean return over {len(returns)} episodes: {mean:.3f} +- {std:.3f}", flush=True)
    results = dict(
        checkpoint=os.path.abspath(checkpoint_path), env=flags.env, trained_steps=int(state["step"]),
        episodes=len(returns), returns=returns, lengths=lengths, mean_return=mean, std_return=std,
        stderr_return=std / math.sqrt(len(returns)), videos=videos, seed=seed,
    )
    with open(os.path.join(run_dir, "test_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results
