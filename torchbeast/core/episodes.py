"""Episode bookkeeping: turns a Gymnasium-API env into one endless stream of step records.

This is the only place the rules live; MonoBeast's actors use it directly and PolyBeast's env
servers run it in Python and only transport its records (`libtorchbeast.Server`). The rules:
- After the last step of an episode the env is reset at once: the record carries the new
  episode's first observation with `done=True`. The first record of a stream has `done=True`.
- `truncated` is True when the episode ended by a time limit and not by termination (an env
  that reports both counts as terminated); a time limit is not a terminal state, so the record
  then also carries the cut episode's true last observation as `final_observation`.
- `episode_step` and `episode_return` count the current episode; on a `done` record they are
  those of the episode that just ended (for logging).
NumPy only: no torch, so env server processes stay light.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

# The fields of a step record, in the order of the Step message of libtorchbeast/rpcenv.proto.
RECORD_KEYS = ("observation", "reward", "done", "truncated", "episode_step", "episode_return", "final_observation")

StepRecord = Dict[str, Any]


def _record(observation: Any, reward: float, done: bool, truncated: bool, episode_step: int,
            episode_return: float, final_observation: Optional[Any] = None) -> StepRecord:
    return dict(observation=observation, reward=float(reward), done=bool(done), truncated=bool(truncated),
                episode_step=int(episode_step), episode_return=float(episode_return),
                final_observation=final_observation)


class EpisodeStream:
    """Steps `env` with auto-reset, counting each episode's steps and return."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.episode_return = 0.0
        self.episode_step = 0

    def initial(self) -> StepRecord:
        """The first record of the stream (seed the env when making it: a seed here rebuilds a maze)."""
        observation, _ = self.env.reset()
        self.episode_return, self.episode_step = 0.0, 0
        return _record(observation, 0.0, True, False, 0, 0.0)

    def step(self, action: Any) -> StepRecord:
        observation, reward, terminated, truncated, _ = self.env.step(action)
        self.episode_step += 1
        self.episode_return += float(reward)
        if not (terminated or truncated):
            return _record(observation, reward, False, False, self.episode_step, self.episode_return)
        cut = bool(truncated) and not terminated
        record = _record(None, reward, True, cut, self.episode_step, self.episode_return,
                         final_observation=observation if cut else None)
        record["observation"], _ = self.env.reset()
        self.episode_return, self.episode_step = 0.0, 0
        return record

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            close()
