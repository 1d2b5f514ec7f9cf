"""Picking the torch device from --gpu_n / --disable_cuda."""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from torchbeast.errors import ConfigError

log = logging.getLogger("torchbeast")


def select_device(gpu_n: int, disable_cuda: bool) -> torch.device:
    """cuda:GPU_N when CUDA is available; the CPU (said once) otherwise."""
    if disable_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        log.info("No GPU found: running on the CPU.")
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if gpu_n >= count:
        raise ConfigError(f"--gpu_n {gpu_n}: this machine has {count} GPU(s), numbered 0 to {count - 1}")
    return torch.device(f"cuda:{gpu_n}")


def set_cpu_threads(requested: Optional[int], env_processes: int) -> int:
    """Sets torch's intra-op threads for this (learner) process and returns the number.

    By default the learner takes the cores its env processes leave free, at least one. More
    threads than free cores make OpenMP's workers wait at every barrier for a core an env process
    holds: on a 2-core machine with 2 actors, 2 learner threads instead of 1 slowed training.
    """
    threads = requested if requested is not None else max(1, (os.cpu_count() or 1) - env_processes)
    torch.set_num_threads(threads)
    return threads
