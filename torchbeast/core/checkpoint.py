"""Checkpoints written durably and atomically, loaded safely, with the previous one kept.

A checkpoint is written to a temporary file in the same folder, fsynced, and renamed over the old
one, and the folder is fsynced so that the rename survives a power cut; the old one is kept as
`model.prev.tar` (a hard link made before the rename), so at every moment a complete checkpoint
exists. Loading uses `weights_only=True` (no pickled code runs) and checks the format, so a
corrupted or foreign file gives one clear ConfigError instead of a traceback from deep inside
torch; `load_latest_checkpoint` falls back to `model.prev.tar` when `model.tar` is missing or
unreadable.
"""
from __future__ import annotations

import glob
import logging
import os
import tempfile
from typing import Any, Dict, Optional, Tuple

import torch

from torchbeast.core.atomic_file import fsync_folder
from torchbeast.errors import ConfigError

log = logging.getLogger("torchbeast")

FORMAT = "torchbeast-mm/1"
REQUIRED_KEYS = ("format", "model_state_dict", "model_config", "step", "flags")
_TMP_PREFIX = ".tmp-"  # temporary files in the checkpoint's folder: .tmp-*.tar


def previous_path(path: str) -> str:
    """model.tar -> model.prev.tar: the checkpoint before the newest."""
    root, ext = os.path.splitext(path)
    return f"{root}.prev{ext}"


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """Writes `state` (plain containers, numbers, strings and tensors) to `path` atomically and
    durably, keeping the checkpoint it replaces as `previous_path(path)`."""
    state = dict(state, format=FORMAT)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tar", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):
            _keep_as_previous(path, folder)
        os.replace(tmp_path, path)
        fsync_folder(folder)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def _keep_as_previous(path: str, folder: str) -> None:
    """Makes the checkpoint at `path` also `model.prev.tar`, leaving `path` in place."""
    link = os.path.join(folder, f"{_TMP_PREFIX}prev-{os.getpid()}.tar")
    try:
        if os.path.lexists(link):
            os.unlink(link)
        os.link(path, link)
        os.replace(link, previous_path(path))
    except OSError:  # a file system without hard links: a moment without model.tar, prev is complete
        os.replace(path, previous_path(path))


def remove_temporary_files(folder: str) -> int:
    """Removes the temporary files a killed save left in `folder`; returns how many."""
    leftovers = glob.glob(os.path.join(folder, f"{_TMP_PREFIX}*.tar"))
    for leftover in leftovers:
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass
    if leftovers:
        log.info("Removed %d temporary checkpoint file(s) left by an interrupted save in %s", len(leftovers), folder)
    return len(leftovers)


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


def load_latest_checkpoint(path: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(path, state) of `path`, or of `model.prev.tar` (saying so) when `path` is missing or
    unreadable; None when neither exists. The ConfigError of `path` when neither loads."""
    previous = previous_path(path)
    if not os.path.exists(path) and not os.path.exists(previous):
        return None
    try:
        return path, load_checkpoint(path)
    except ConfigError as error:
        if not os.path.exists(previous):
            raise
        try:
            state = load_checkpoint(previous)
        except ConfigError:
            raise error from None
        log.warning("%s; falling back to the previous checkpoint %s (step %d)", error, previous, int(state["step"]))
        return previous, state
