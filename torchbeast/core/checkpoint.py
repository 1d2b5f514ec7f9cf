"""Checkpoints written atomically and loaded safely.

A checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over
the old one, so a crash mid-write leaves the previous checkpoint intact. Loading uses
`weights_only=True` (no pickled code runs) and checks the format, so a corrupted or foreign file
gives one clear ConfigError instead of a traceback from deep inside torch.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict

import torch

from torchbeast.errors import ConfigError

FORMAT = "torchbeast-mm/1"
REQUIRED_KEYS = ("format", "model_state_dict", "model_config", "step", "flags")


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """Writes `state` (plain containers, numbers, strings and tensors) to `path` atomically."""
    state = dict(state, format=FORMAT)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".tar", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Loads a checkpoint written by save_checkpoint; ConfigError if missing, corrupt or foreign."""
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path} does not exist (train first, or pass --checkpoint PATH)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files; all mean the same here
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"checkpoint {path} could not be read (corrupted or not a torchbeast-mm "
                          f"checkpoint): {first_line}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"checkpoint {path} is not a torchbeast-mm checkpoint (expected format {FORMAT})")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ConfigError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return state
