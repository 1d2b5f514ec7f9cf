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
- Frames render on the calling thread, as dm_control's `Camera.render` does (same scene, option,
  camera and calls), without dm_control's render thread.

The equivalence tests (tests/test_env_fast_step.py) compare the frames with upstream's, episode
after episode.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

import numpy as np

_FONT_SCALE = 150  # dm_control's MjrContext default (mujoco.mjtFontScale.mjFONTSCALE_150)
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
    """One OpenGL context per env; an MjrContext per episode sharing the master's textures."""

    def __init__(self) -> None:
        self._gl: Optional[Any] = None
        self._gl_size: Tuple[int, int] = (0, 0)
        self._master: Optional[Any] = None
        self._context: Optional[Any] = None  # The current episode's MjrContext.
        self._placeholder_names: Optional[np.ndarray] = None

    @property
    def has_master(self) -> bool:
        """Whether a master context holds textures that a placeholder model can share."""
        return self._master is not None

    def _make_current(self) -> None:
        # Cheap (microseconds), and right even when another context was made current on this
        # thread since our last frame (another env in the process).
        self._gl.make_current()

    def new_episode(self, model: Any, placeholder_textures: bool) -> None:
        """Make the rendering context for a newly compiled model."""
        import mujoco

        size = (model.vis.global_.offwidth, model.vis.global_.offheight)
        if self._gl is not None and (size[0] > self._gl_size[0] or size[1] > self._gl_size[1]):
            if placeholder_textures:
                raise RuntimeError("the offscreen buffer grew between episodes: textures cannot be shared")
            self.close()
        if self._gl is None:
            self._gl = mujoco.GLContext(*size)
            self._gl_size = size
        self._make_current()
        self._free_episode_context()
        if placeholder_textures and self._master is not None:
            context = mujoco.MjrContext(model, _FONT_SCALE)
            count = context.ntexture
            if count != self._master.ntexture or not np.array_equal(
                    context.textureType[:count], self._master.textureType[:count]):
                context.free()
                raise RuntimeError(f"placeholder model has {count} textures, the master context "
                                   f"{self._master.ntexture}: the texture sets differ")
            self._placeholder_names = context.texture[:count].copy()
            context.texture[:count] = self._master.texture[:count]
        else:
            if placeholder_textures:
                raise RuntimeError("a placeholder-texture model needs a master context")
            if self._master is not None:
                self._master.free()
            context = mujoco.MjrContext(model, _FONT_SCALE)
            self._master = context
        # mjr_makeContext leaves the window framebuffer bound; dm_control's Camera binds the
        # offscreen one once, as we do here.
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, context)
        self._context = context

    def render(self, model: Any, data: Any, scene: Any, option: Any, perturb: Any, camera: Any,
               width: int, height: int) -> np.ndarray:
        """RGB (height, width, 3) uint8, top row first: dm_control's Camera.render(), same calls."""
        import mujoco

        self._make_current()
        mujoco.mjv_updateScene(model, data, option, perturb, camera, mujoco.mjtCatBit.mjCAT_ALL, scene)
        rect = mujoco.MjrRect(0, 0, width, height)
        mujoco.mjr_render(rect, scene, self._context)
        pixels = np.empty((height, width, 3), dtype=np.uint8)
        mujoco.mjr_readPixels(pixels, None, rect, self._context)
        return pixels[::-1].copy()

    def _free_episode_context(self) -> None:
        if self._context is None:
            return
        if self._context is not self._master:
            # Put its own (placeholder) names back, so freeing it leaves the master's textures.
            count = len(self._placeholder_names)
            self._context.texture[:count] = self._placeholder_names
            self._context.free()
        self._context = None
        self._placeholder_names = None

    def close(self) -> None:
        if self._gl is None:
            return
        self._make_current()
        self._free_episode_context()
        if self._master is not None:
            self._master.free()
            self._master = None
        self._gl.free()
        self._gl = None
