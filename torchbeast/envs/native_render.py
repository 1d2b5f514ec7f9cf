"""Compiling a Memory Maze episode's model and rendering its camera, without re-uploading textures.

Every Memory Maze reset builds a new maze, so composer compiles a new MuJoCo model and dm_control
makes a new OpenGL context and `MjrContext` for it. Nearly all of that time goes to the 88
1024x1024 textures (~279 MB): the compiler decodes and copies them into the model, and
`mjr_makeContext` uploads them and builds their mipmaps (with OSMesa, in software). The textures
are the same in every episode (the same asset files in the same order); only the maze geometry
and the materials' texture choices change.

So, per env:
- The first episode's model is compiled with its real textures, and its `MjrContext` (the
  *master*) uploads them once, in one OpenGL context kept for the life of the env.
- Later episodes whose textures are the same (same texture elements, same asset bytes) are compiled
  with 1x1 placeholder textures, same types and order: the model is otherwise the same, and
  physics never reads texture pixels. Their `MjrContext` is made from that model (planes,
  materials, fog, buffers: everything per model), then its texture names are pointed at the
  master's texture objects, which live in the same OpenGL context. Before it is freed, its own
  placeholder names are put back, so freeing it never deletes the master's textures.
- Frames render on the calling thread with the calls dm_control's `Camera.render` makes (same
  scene size, option, camera; `_native_step.EpisodeRenderer`), without dm_control's render
  thread. Before `mjr_render`, the geoms wholly outside the camera's view frustum, or wholly
  hidden behind one opaque wall plane, are dropped from the scene (envs_native/render.h says why
  that cannot change a pixel, and when it is not done): a Memory Maze camera sees a tenth to a
  fifth of the maze's ~170-400 wall and floor planes, and with OSMesa every geom drawn costs ~8 us.

The equivalence tests (tests/test_env_fast_step.py) compare the frames with upstream's, episode
after episode.
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np

_TEXTURE_ELEMENT = re.compile(r"<texture\b[^>]*>")


def _texture_signature(xml: str, assets: Dict[str, bytes]) -> Tuple[Any, ...]:
    """What decides a model's texture pixels: its <texture> elements, in order, and the asset bytes."""
    return tuple(_TEXTURE_ELEMENT.findall(xml)), tuple(sorted(assets.items()))


def _has_pixel_source(texture: Any) -> bool:
    """Whether a texture's pixels come from a file or inline data (not from a builtin pattern)."""
    return bool(texture.file) or any(texture.cubefiles) or len(texture.data) > 0


class EpisodeModels:
    """Compiles episode models, with placeholder textures once the master context holds them."""

    def __init__(self) -> None:
        self._master_signature: Optional[Tuple[Any, ...]] = None

    def compile(self, mjcf_model: Any, master_ready: bool) -> Tuple[Any, bool]:
        """(mujoco.MjModel, whether its textures are placeholders) for an MJCF root element.

        `master_ready`: the renderer holds a master context (textures from an earlier model).
        """
        import mujoco

        xml = mjcf_model.to_xml_string()
        assets = mjcf_model.get_assets()
        signature = _texture_signature(xml, assets)
        spec = mujoco.MjSpec.from_string(xml, assets=assets)
        if not master_ready or signature != self._master_signature:
            self._master_signature = signature
            return spec.compile(), False
        for texture in spec.textures:
            if _has_pixel_source(texture):
                texture.file = ""
                texture.cubefiles = [""] * len(texture.cubefiles)
                texture.content_type = ""
                texture.data = b""
                texture.builtin = mujoco.mjtBuiltin.mjBUILTIN_FLAT
                texture.width = texture.height = 1
                texture.nchannel = 3
        return spec.compile(), True


class SharedTextureRenderer:
    """One OpenGL context per env; an MjrContext per episode sharing the master's textures.

    The MuJoCo side (contexts, scene, mjv_updateScene / mjr_render / mjr_readPixels) is
    `_native_step.EpisodeRenderer`; this class owns the OpenGL context. The context is made
    current on the calling thread for each call and, with EGL, released after it: EGL refuses to
    make a context current on one thread while another thread holds it, and an env may be stepped
    from one thread and then another (a thread pool).
    """

    def __init__(self, native: Any, cull: bool = True) -> None:
        self._native = native.EpisodeRenderer()
        self._cull = cull
        self._gl: Optional[Any] = None
        self._gl_size: Tuple[int, int] = (0, 0)
        self._release = _context_release()
        self.last_cull: Optional[Any] = None  # CullResult of the last frame

    @property
    def has_master(self) -> bool:
        """Whether a master context holds textures that a placeholder model can share."""
        return self._native.has_master

    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        # Cheap (microseconds), and right even when another context was made current on this
        # thread since our last frame (another env in the process).
        self._gl.make_current()
        try:
            yield
        finally:
            if self._release is not None:
                self._release()

    def new_episode(self, model: Any, placeholder_textures: bool, max_geom: int) -> None:
        """Make the rendering context and the scene (`max_geom` geoms) for a newly compiled model."""
        import mujoco

        size = (model.vis.global_.offwidth, model.vis.global_.offheight)
        if self._gl is not None and (size[0] > self._gl_size[0] or size[1] > self._gl_size[1]):
            if placeholder_textures:
                raise RuntimeError("the offscreen buffer grew between episodes: textures cannot be shared")
            self.close()
        if self._gl is None:
            self._gl = mujoco.GLContext(*size)
            self._gl_size = size
        with self._current():
            self._native.new_episode(model._address, max_geom, placeholder_textures)

    def render(self, model: Any, data: Any, camera_id: int, width: int, height: int) -> np.ndarray:
        """RGB (height, width, 3) uint8, top row first: dm_control's Camera.render(), same calls."""
        with self._current():
            frame, self.last_cull = self._native.render(model._address, data._address, camera_id, width, height,
                                                        self._cull)
        return frame

    def close(self) -> None:
        if self._gl is None:
            return
        with self._current():
            self._native.close()
        self._gl.free()
        self._gl = None


def _context_release() -> Optional[Callable[[], None]]:
    """What releases the current OpenGL context of this thread, for backends that need it (EGL)."""
    if os.environ.get("MUJOCO_GL", "").strip().lower() != "egl":
        return None
    from mujoco import egl

    def release() -> None:
        egl.EGL.eglMakeCurrent(egl.EGL_DISPLAY, egl.EGL.EGL_NO_SURFACE, egl.EGL.EGL_NO_SURFACE,
                               egl.EGL.EGL_NO_CONTEXT)

    return release
