"""Faster, bit-identical replacements for Memory Maze's two hot spots, scoped to one env instance.

Profiled with memory-maze 1.0.3 / dm_control 1.0.50 (cProfile, random actions, 9x9, OSMesa):
about 60% of a step went to dm_control's `TargetSphere._update_activation`, a Python loop over
every contact, run for every target after each of the 50 physics substeps of a control step; and
about 4 ms of each step went to `Physics.render` building and throwing away a `Camera` (its
`MjvScene` allocation dominates) for each frame. This module replaces both for the targets and
cameras of one composer environment:

- `_TargetContactCheck`: one hook per substep reads the contact geom pairs once as a NumPy array
  and tests each not-yet-activated target's geom id against it; the targets' own per-substep
  hooks are switched off on those instances. Same rule as upstream (a target activates when its
  geom appears in any contact), so the same activations on the same substeps.
- `_PersistentCamera`: the camera observables render through one `Camera` kept per physics
  (rebuilt when composer recompiles the physics at each reset) instead of a new one per frame.
  `mjv_updateScene` refills the scene on every render, so frames are unchanged.

Nothing is patched globally: other environments in the process, and ours with
impl="upstream", run dm_control's code. The code relies on a few private attributes of
dm_control's `TargetSphere` and `MJCFCamera` and of memory_maze's task (pinned versions);
`install_fast_path` checks for the target ones and refuses with a clear error instead of silently
diverging, and the equivalence tests compare both paths frame by frame.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import numpy as np

_TARGET_ATTRIBUTES = ("_activated", "_geom_id", "_material", "_specific_collision_geom_ids")


def _skip_target_substep(physics: Any, random_state: Any) -> None:
    """Stands in for a target's own after_substep hook: `_TargetContactCheck` does its work."""


class _TargetContactCheck:
    """Activates Memory Maze's target spheres from one vectorised contact test per substep."""

    def __init__(self, targets: List[Any]) -> None:
        # The task's own list: memory_maze recreates targets in place when it shuffles colours.
        self._targets = targets

    def take_over_targets(self, random_state: Any = None) -> None:
        """Switch off the per-target substep hook on the current target instances.

        Registered as an `initialize_episode_mjcf` hook, so targets that memory_maze recreates at a
        reset (the 6CL variants) are taken over before composer rescans the entity hooks.
        """
        for target in self._targets:
            missing = [name for name in _TARGET_ATTRIBUTES if not hasattr(target, name)]
            if missing:
                raise RuntimeError(
                    f"impl='fast' expects dm_control's TargetSphere (attributes {missing} are "
                    f"missing on {type(target).__name__}); use impl='upstream' with this "
                    "dm_control version")
            target.after_substep = _skip_target_substep

    def after_substep(self, physics: Any, random_state: Any) -> None:
        pending = [target for target in self._targets if not target._activated]
        if not pending:
            return
        contact_geoms = physics.data.contact.geom  # (ncon, 2) int array
        for target in pending:
            if target._specific_collision_geom_ids:
                target._update_activation(physics)  # Rare case, not used by Memory Maze.
            elif target._geom_id in contact_geoms:
                target._activated = True
                physics.bind(target._material).rgba[-1] = 0


class _PersistentCamera:
    """Renders one MJCFCamera observable through a Camera kept for the life of a physics."""

    def __init__(self, observable: Any) -> None:
        self._observable = observable
        self._camera: Optional[Any] = None

    def make_callable(self, physics: Any) -> Callable[[], np.ndarray]:
        """Replacement for `MJCFCamera._callable`: composer calls it once per physics/updater."""
        from dm_control.mujoco import engine

        self.close()
        observable = self._observable

        def get_observation() -> np.ndarray:
            if self._camera is None:
                self._camera = engine.Camera(
                    physics=physics,
                    height=observable.height,
                    width=observable.width,
                    camera_id=observable._mjcf_element.full_identifier)
            pixels = self._camera.render(
                depth=observable.depth,
                segmentation=observable.segmentation,
                scene_option=observable.scene_option,
                render_flag_overrides=observable.render_flag_overrides)
            # The camera reuses its pixel buffer: copy, as a fresh camera's buffer would be.
            return np.array(np.atleast_3d(pixels), copy=True)

        return get_observation

    def close(self) -> None:
        if self._camera is not None:
            self._camera.scene.free()
            self._camera = None


class FastPath:
    """The fast-path state of one composer environment; `close()` frees its cameras."""

    def __init__(self, composer_env: Any) -> None:
        from dm_control.composer.observation.observable import mjcf as mjcf_observable

        task = composer_env.task
        targets = getattr(task, "_targets", None)
        if not isinstance(targets, list):
            raise RuntimeError(
                f"impl='fast' expects memory_maze's MemoryMazeTask with a `_targets` list, got "
                f"{type(task).__name__}; use impl='upstream' with this memory_maze version")
        self._contact_check = _TargetContactCheck(targets)
        self._contact_check.take_over_targets()
        composer_env.add_extra_hook("initialize_episode_mjcf", self._contact_check.take_over_targets)
        composer_env.add_extra_hook("after_substep", self._contact_check.after_substep)

        self._cameras: List[_PersistentCamera] = []
        for observable in task.observables.values():
            if isinstance(observable, mjcf_observable.MJCFCamera):
                camera = _PersistentCamera(observable)
                observable._callable = camera.make_callable  # This instance only.
                self._cameras.append(camera)

    def close(self) -> None:
        for camera in self._cameras:
            camera.close()


def install_fast_path(composer_env: Any) -> FastPath:
    """Switch one dm_control composer Environment built by memory_maze to the fast path.

    Takes effect from the next reset (composer recompiles the physics and rescans the hooks at
    every Memory Maze reset, and a fresh environment resets before its first step).
    """
    return FastPath(composer_env)
