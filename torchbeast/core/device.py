"""Picking the torch device from --gpu_n / --disable_cuda."""
from __future__ import annotations

import logging

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
