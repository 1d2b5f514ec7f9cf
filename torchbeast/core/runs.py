"""Where a run lives and how its model is rebuilt: SAVEDIR/XPID/, the model config, resuming."""
from __future__ import annotations

import argparse
import glob
import os
import time
from typing import Any, Dict, Optional

from torchbeast.errors import ConfigError
from torchbeast.models import MemoryAgent

NUM_ACTIONS = 6  # Memory Maze: noop, forward, left, right, forward+left, forward+right
MODEL_KEYS = ("posemb", "encoder", "use_lstm", "hidden_size")


def train_run_dir(flags: argparse.Namespace) -> str:
    """SAVEDIR/XPID for training; sets flags.xpid to a timestamped name when none was given."""
    if flags.xpid is None:
        flags.xpid = "torchbeast-" + time.strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(os.path.expanduser(flags.savedir), flags.xpid)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--savedir {flags.savedir}: cannot create {run_dir}: {e.strerror}") from None
    return run_dir


def test_checkpoint_path(flags: argparse.Namespace) -> str:
    """--checkpoint, else SAVEDIR/XPID/model.tar, else the newest SAVEDIR/*/model.tar."""
    if flags.checkpoint:
        return flags.checkpoint
    savedir = os.path.expanduser(flags.savedir)
    if flags.xpid is not None:
        return os.path.join(savedir, flags.xpid, "model.tar")
    candidates = glob.glob(os.path.join(savedir, "*", "model.tar"))
    if not candidates:
        raise ConfigError(f"--mode test: no checkpoint found under --savedir {savedir} "
                          "(train first, or pass --xpid or --checkpoint)")
    return max(candidates, key=os.path.getmtime)


def model_config(flags: argparse.Namespace) -> Dict[str, Any]:
    return {key: getattr(flags, key) for key in MODEL_KEYS}


def build_model(config: Dict[str, Any]) -> MemoryAgent:
    return MemoryAgent(num_actions=NUM_ACTIONS, **config)


def check_resume_compatible(saved_config: Dict[str, Any], flags: argparse.Namespace, path: str) -> None:
    """A resumed run must build the same model it saved."""
    current = model_config(flags)
    diffs = [f"--{k} {saved_config.get(k)!r} (saved) vs {current[k]!r} (now)" for k in MODEL_KEYS
             if saved_config.get(k) != current[k]]
    if diffs:
        raise ConfigError(f"cannot resume {path}: the model flags differ: {'; '.join(diffs)} "
                          "(use another --xpid for a new run)")


def existing_checkpoint(run_dir: str) -> Optional[str]:
    path = os.path.join(run_dir, "model.tar")
    return path if os.path.exists(path) else None
