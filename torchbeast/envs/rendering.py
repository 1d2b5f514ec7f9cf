"""Choose MuJoCo's headless OpenGL backend before dm_control is imported.

dm_control reads `MUJOCO_GL` once, when it is first imported, and memory_maze sets it to `egl`
when it is unset. EGL is the fast choice on an NVIDIA machine; on a CPU-only machine OSMesa is the
one that is always there (and measured slightly faster here than EGL on Mesa's llvmpipe). A missing
library otherwise surfaces deep inside PyOpenGL as an obscure import error, so we check for it up
front and name the Debian package to install.
"""
from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys

from torchbeast.errors import ConfigError

# Backend -> (shared library name for ctypes.util.find_library, Debian package that provides it).
_BACKEND_LIBRARIES = {
    "egl": ("EGL", "libegl1"),
    "osmesa": ("OSMesa", "libosmesa6"),
}


def nvidia_gpu_present() -> bool:
    """True when an NVIDIA GPU can be seen: a device node, or a working `nvidia-smi`."""
    if os.path.exists("/dev/nvidia0"):
        return True
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return False
    try:
        result = subprocess.run([nvidia_smi, "-L"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and b"GPU" in result.stdout


def check_backend_library(backend: str) -> None:
    """Raise ConfigError naming the Debian package when `backend`'s library is missing.

    Backends we do not know (e.g. `glfw`, for a desktop) are left to dm_control.
    """
    if backend not in _BACKEND_LIBRARIES:
        return
    library, package = _BACKEND_LIBRARIES[backend]
    if ctypes.util.find_library(library) is None:
        raise ConfigError(
            f"MUJOCO_GL={backend} needs lib{library}, which was not found: install the Debian "
            f"package {package} (apt-get install {package}) or set MUJOCO_GL to another backend "
            f"({', '.join(sorted(_BACKEND_LIBRARIES))})")


def configure_rendering() -> str:
    """Set `MUJOCO_GL` for headless rendering and return the backend in use.

    A value the user set explicitly wins; otherwise `egl` when an NVIDIA GPU is present and
    `osmesa` when not. Call it before anything imports dm_control or mujoco (make_env does); once
    dm_control is imported the backend is fixed and this only reports it.
    """
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    if not backend:
        if "dm_control" in sys.modules:
            # Too late to choose: dm_control already picked its own default.
            return "dm_control default"
        backend = "egl" if nvidia_gpu_present() else "osmesa"
        os.environ["MUJOCO_GL"] = backend
    check_backend_library(backend)
    if backend == "osmesa":
        # Mesa's llvmpipe splits each frame across one thread per core. A 64x64 frame is too small
        # to gain from it, and our env processes already keep every core busy: rendering on the
        # calling thread measured ~10% more steps/s with one process and ~5% with one per core.
        # Read when the first GL context is made, so setting it here is in time; a user's wins.
        os.environ.setdefault("LP_NUM_THREADS", "0")
    return backend
