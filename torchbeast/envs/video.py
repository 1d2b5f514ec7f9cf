"""Write an episode as an MP4: the agent's view, and beside it a top-down map with its trace.

A 64x64 frame is too small to judge a policy by; watching the upscaled view next to where the
agent has been (for ExtraObs envs) shows at a glance whether it explores, loops, or goes straight
to targets it has seen. Drawing is plain NumPy (no matplotlib per frame), so a 1000-step episode
encodes in seconds.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np

_WALL = np.array([40, 40, 40], dtype=np.uint8)
_FREE = np.array([210, 210, 210], dtype=np.uint8)
_TRACE = np.array([60, 110, 230], dtype=np.uint8)
_AGENT = np.array([230, 40, 40], dtype=np.uint8)
_MACRO_BLOCK = 16  # H.264 with yuv420p wants sides divisible by 16; we pad to that.


def _to_hwc(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 HWC or CHW images, got {frame.dtype} {frame.shape}")
    if frame.shape[0] == 3 and frame.shape[-1] != 3:
        frame = np.transpose(frame, (1, 2, 0))
    return frame


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    out = np.zeros((height, width, 3), dtype=np.uint8)
    out[:image.shape[0], :image.shape[1]] = image
    return out


def _round_up(value: int) -> int:
    return -(-value // _MACRO_BLOCK) * _MACRO_BLOCK


class _MapPanel:
    """Top-down maze map; `draw(t)` adds the trace of positions[:t + 1] and the current one."""

    def __init__(self, maze_layout: np.ndarray, positions: np.ndarray, height: int) -> None:
        layout = np.asarray(maze_layout)
        size = layout.shape[0]
        self._cell = max(1, height // size)
        # Layout row 0 is the bottom of the maze; image row 0 is the top.
        cells = np.where(np.flipud(layout)[..., None] > 0, _FREE, _WALL)
        self._base = np.repeat(np.repeat(cells, self._cell, axis=0), self._cell, axis=1)
        side = size * self._cell
        # positions are fractions of the maze side (x, y), as in the env's `position`.
        pixels = np.asarray(positions, dtype=np.float64) * side
        self._cols = np.clip(pixels[:, 0], 0, side - 1).astype(int)
        self._rows = np.clip(side - pixels[:, 1], 0, side - 1).astype(int)
        self._trace = self._base.copy()

    def draw(self, t: int) -> np.ndarray:
        # Join the previous position to this one with a 2-pixel-wide line.
        start = max(0, t - 1)
        n = max(abs(self._rows[t] - self._rows[start]), abs(self._cols[t] - self._cols[start])) + 1
        rows = np.linspace(self._rows[start], self._rows[t], n).round().astype(int)
        cols = np.linspace(self._cols[start], self._cols[t], n).round().astype(int)
        self._trace[rows, cols] = _TRACE
        self._trace[np.minimum(rows + 1, self._trace.shape[0] - 1), cols] = _TRACE
        image = self._trace.copy()
        r = max(1, self._cell // 6)
        row, col = self._rows[t], self._cols[t]
        image[max(0, row - r):row + r + 1, max(0, col - r):col + r + 1] = _AGENT
        return image


def write_episode_video(path: Union[str, os.PathLike], frames: Sequence[np.ndarray],
                        positions: Optional[Sequence[np.ndarray]] = None,
                        maze_layout: Optional[np.ndarray] = None, fps: int = 8,
                        scale: int = 4) -> str:
    """Write `frames` (uint8, HWC or CHW) to an MP4 at `path` and return the path.

    The view is upscaled `scale`x (nearest neighbour). With `positions` ((T, 2), the env's
    `position` observations: fractions of the maze side, x then y) and `maze_layout` (the env's
    (N, N) layout, 1 = free, row 0 at the bottom), a map panel with the trace so far is drawn to
    the right of the view.
    """
    import imageio.v2 as imageio

    if len(frames) == 0:
        raise ValueError("no frames to write")
    with_map = positions is not None and maze_layout is not None
    if with_map and len(positions) != len(frames):
        raise ValueError(f"got {len(positions)} positions for {len(frames)} frames")

    first = _to_hwc(frames[0])
    view_h, view_w = first.shape[0] * scale, first.shape[1] * scale
    panel = _MapPanel(maze_layout, np.asarray(positions), view_h) if with_map else None
    panel_w = panel.draw(0).shape[1] if panel is not None else 0
    height, width = _round_up(view_h), _round_up(view_w + panel_w)

    path = os.fspath(path)
    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                            macro_block_size=_MACRO_BLOCK) as writer:
        for t, frame in enumerate(frames):
            view = np.repeat(np.repeat(_to_hwc(frame), scale, axis=0), scale, axis=1)
            if panel is not None:
                map_image = panel.draw(t)
                row = np.zeros((view_h, view_w + panel_w, 3), dtype=np.uint8)
                row[:, :view_w] = view
                row[:map_image.shape[0], view_w:view_w + map_image.shape[1]] = map_image
                view = row
            writer.append_data(_pad_to(view, height, width))
    return path
