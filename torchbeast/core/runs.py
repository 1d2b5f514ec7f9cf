"""Where a run lives and how its model is rebuilt: SAVEDIR/XPID/, the model config, resuming."""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Dict

from torchbeast.core.scores import canonical_env_id
from torchbeast.envs.memory_maze import NUM_ACTIONS
from torchbeast.errors import ConfigError
from torchbeast.models import MemoryAgent

MODEL_KEYS = ("posemb", "encoder", "use_lstm", "hidden_size")


def default_xpid() -> str:
    """The run name when --xpid is not given: torchbeast-<date-time>."""
    return "torchbeast-" + time.strftime("%Y%m%d-%H%M%S")


def train_run_dir(savedir: str, xpid: str) -> str:
    """Creates SAVEDIR/XPID (if new) and returns it."""
    run_dir = os.path.join(os.path.expanduser(savedir), xpid)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--savedir {savedir}: cannot create {run_dir}: {e.strerror}") from None
    return run_dir


def model_config(flags: argparse.Namespace) -> Dict[str, Any]:
    """The flags that decide the model's shape; saved in checkpoints as a plain dict."""
    return {key: getattr(flags, key) for key in MODEL_KEYS}


def build_model(config: Dict[str, Any]) -> MemoryAgent:
    return MemoryAgent(num_actions=NUM_ACTIONS, **config)


def check_resume_compatible(saved_config: Dict[str, Any], config: Dict[str, Any], path: str) -> None:
    """A resumed run must build the same model it saved."""
    diffs = [f"--{k} {saved_config.get(k)!r} (saved) vs {config[k]!r} (now)" for k in MODEL_KEYS
             if saved_config.get(k) != config[k]]
    if diffs:
        raise ConfigError(f"cannot resume {path}: the model flags differ: {'; '.join(diffs)} "
                          "(use another --xpid for a new run)")


def check_trained_env(state: Dict[str, Any], env_id: str, path: str, allow_mismatch: bool) -> None:
    """A checkpoint is resumed or tested on the env it was trained on, unless the user says to go ahead."""
    trained = state["flags"].get("env") if isinstance(state.get("flags"), dict) else None
    if trained is None or allow_mismatch or canonical_env_id(trained) == canonical_env_id(env_id):
        return
    raise ConfigError(f"checkpoint {path} was trained on --env {trained}, not --env {env_id} "
                      f"(pass --env {trained}, or --allow_env_mismatch to use it on {env_id} anyway)")

