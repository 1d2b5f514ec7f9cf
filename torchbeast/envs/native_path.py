"""impl="fast": Memory Maze's reset and step driven by us, bit-identical to upstream, ~2x the fast_v1 rate.

memory_maze builds a dm_control composer Environment under a chain of dm_env wrappers. Per
control step, composer runs Python hooks around each of 50 physics substeps, renders the camera
on dm_control's render thread and fills an observation buffer for ~24 observables; per reset it
recompiles the maze and makes a new rendering context (textures uploaded again). `NativePath`
takes over both for one env, calling the same task, entity hooks and wrappers in the same order:

- reset: composer's own hooks (maze generation, spawn, targets) with the env's RandomState, as
  `Environment._reset_attempt` does; the model compiled and rendered through `native_render`
  (textures compiled and uploaded once per env, not once per episode).
- step: `before_step` hooks in Python, then the substeps with the walker's and the targets'
  `after_substep` hooks in C++ (`_native_step`, on the same mjModel/mjData), then `after_step`,
  reward, discount and termination as composer computes them.
- observations: only the observables the wrappers read, computed on demand by the observables'
  own callables (the camera through our renderer, on the calling thread), then each wrapper's own
  `observation()`, innermost first.

It relies on private attributes of dm_control's composer Environment, its hooks and TargetSphere
(pinned versions: memory-maze 1.0.3, dm_control 1.0.50); `NativePath` checks every one it uses
and everything it assumes about the hooks and observables, and refuses with a clear error
otherwise. The equivalence tests compare it with upstream frame by frame across resets.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from torchbeast.envs.native_render import EpisodeModels, SharedTextureRenderer

_ENV_ATTRIBUTES = ("_hooks", "_time_limit", "_legacy_step", "_raise_exception_on_physics_error",
                   "_recompile_mjcf_every_episode", "_fixed_initial_state", "_max_reset_attempts",
                   "_overridden_n_sub_steps")
_TARGET_ATTRIBUTES = ("_activated", "_geom_id", "_material", "_specific_collision_geom_ids")
# Corruptors known to draw no random numbers (an observable we skip must not change the RNG).
_DETERMINISTIC_CORRUPTORS = {
    ("dm_control.locomotion.walkers.legacy_base", "WalkerObservables.sensors_touch.<locals>.<lambda>"),
}


class NativePathUnavailable(RuntimeError):
    """impl="fast" cannot drive this env (missing build, other dependency versions, another task)."""


def _refuse(reason: str) -> NativePathUnavailable:
    return NativePathUnavailable(f"impl='fast' cannot run this env: {reason}; use impl='fast_v1' "
                                 "(--env_impl fast_v1) or impl='upstream'")


def _require(obj: Any, names: tuple, what: str) -> None:
    missing = [name for name in names if not hasattr(obj, name)]
    if missing:
        raise _refuse(f"{what} lacks {missing} (other dm_control/memory_maze versions than 1.0.50/1.0.3?)")


def _native_step_module() -> Any:
    """The compiled substep loop, checked against the MuJoCo that Python uses."""
    import mujoco

    try:
        from torchbeast.envs import _native_step
    except ImportError as e:
        raise _refuse(f"the native substep module did not load ({e}); rebuild with "
                      "`pip install --no-build-isolation -e .` once mujoco is installed") from None
    if _native_step.MJ_VERSION_HEADER != mujoco.mj_version():
        raise _refuse(f"the native substep module was built against MuJoCo {_native_step.MJ_VERSION_HEADER}, "
                      f"this process runs {mujoco.mj_versionString()}; rebuild with "
                      "`pip install --no-build-isolation -e .`")
    return _native_step


class _Observations(dict):
    """Composer's observation dict, each observable computed when a wrapper first reads it.

    Values are copied (`np.array`) as composer's observation buffers copy them, so a later
    physics step never changes an observation already returned.
    """

    def __init__(self, callables: Dict[str, Callable[[], Any]]) -> None:
        super().__init__()
        self._callables = callables

    def __missing__(self, key: str) -> Any:
        value = np.array(self._callables[key]())
        self[key] = value
        return value


class NativePath:
    """Resets and steps one memory_maze env (the dm_env wrapper chain `dm_env`) natively."""

    def __init__(self, dm_env: Any) -> None:
        from dm_control import composer
        from dm_control.composer.observation.observable import mjcf as mjcf_observable
        from memory_maze import wrappers as mm_wrappers

        self._native = _native_step_module()
        # Walk the wrapper chain: discrete actions, then observation wrappers (applied innermost first).
        self._action_set: Optional[List[np.ndarray]] = None
        observation_wrappers = []
        env = dm_env
        while not isinstance(env, composer.Environment):
            if isinstance(env, mm_wrappers.DiscreteActionSetWrapper):
                self._action_set = list(env.action_set)
            elif isinstance(env, mm_wrappers.ObservationWrapper):
                if type(env).step is not mm_wrappers.ObservationWrapper.step or \
                        type(env).reset is not mm_wrappers.ObservationWrapper.reset:
                    raise _refuse(f"wrapper {type(env).__name__} overrides step/reset")
                observation_wrappers.append(env)
            else:
                raise _refuse(f"unknown wrapper {type(env).__name__} around the composer env")
            env = env.env
        self._observation_wrappers = observation_wrappers[::-1]
        self._env = env
        _require(env, _ENV_ATTRIBUTES, "composer.Environment")
        if env._raise_exception_on_physics_error is not True or env._fixed_initial_state or \
                not env._recompile_mjcf_every_episode or env._overridden_n_sub_steps is not None:
            raise _refuse("the composer env is configured differently from memory_maze's")
        self._hooks = env._hooks
        self._task = env.task
        targets = getattr(self._task, "_targets", None)
        if not isinstance(targets, list):
            raise _refuse(f"task {type(self._task).__name__} has no `_targets` list")

        self._camera_observables = {}
        for name, observable in self._task.observables.items():
            if not observable.enabled:
                continue
            if observable.update_interval not in (None, 1) or observable.delay not in (None, 0) or \
                    observable.buffer_size not in (None, 1) or observable.aggregator is not None:
                raise _refuse(f"observable {name} is buffered, delayed or aggregated")
            corruptor = observable.corruptor
            if corruptor is not None and (getattr(corruptor, "__module__", None),
                                          getattr(corruptor, "__qualname__", None)) not in _DETERMINISTIC_CORRUPTORS:
                raise _refuse(f"observable {name} has a corruptor that may draw random numbers")
            if isinstance(observable, mjcf_observable.MJCFCamera):
                _require(observable, ("_mjcf_element",), f"camera observable {name}")
                if observable.depth or observable.segmentation or observable.scene_option is not None or \
                        observable.render_flag_overrides:
                    raise _refuse(f"camera observable {name} renders depth/segmentation or custom options")
                self._camera_observables[name] = observable

        self._models = EpisodeModels()
        self._renderer = SharedTextureRenderer(self._native)
        self._physics: Optional[Any] = None
        self._callables: Dict[str, Callable[[], Any]] = {}
        # Resets whose model was compiled with placeholder textures, rendering with the textures
        # that the first episode uploaded (the tests check the hand-over ran).
        self.shared_texture_resets = 0
        # Composer built and rendered a first physics already; we compile our own at each reset.
        env.physics.free()

    # --- reset ---------------------------------------------------------------------------------

    def reset(self) -> Any:
        """Start an episode; returns a dm_env FIRST TimeStep with the wrapped observation."""
        from dm_control import composer

        failed_attempts = 0
        while True:
            try:
                return self._reset_attempt()
            except composer.EpisodeInitializationError:
                failed_attempts += 1
                if failed_attempts >= self._env._max_reset_attempts:
                    raise

    def _reset_attempt(self) -> Any:
        import dm_env

        random_state = self._env.random_state
        self._hooks.initialize_episode_mjcf(random_state)
        self._recompile()
        with self._physics.reset_context():
            self._hooks.initialize_episode(self._proxy, random_state)
        self._bind_targets()
        return dm_env.TimeStep(dm_env.StepType.FIRST, None, None, self._observation())

    def _recompile(self) -> None:
        """Composer's _recompile_physics_and_update_observables, with our compile and renderer."""
        from dm_control import mjcf
        from dm_control.mujoco import wrapper

        if self._physics is not None:
            self._physics.free()
            self._physics = None
        model, placeholder_textures = self._models.compile(self._task.root_entity.mjcf_model,
                                                           master_ready=self._renderer.has_master)
        self.shared_texture_resets += int(placeholder_textures)
        physics = mjcf.Physics.from_model(wrapper.MjModel(model))
        physics.legacy_step = self._env._legacy_step
        self._physics = physics
        self._proxy = weakref.proxy(physics)
        self._num_substeps = self._task.physics_steps_per_control_step
        self._hooks.refresh_entity_hooks()
        self._check_substep_hooks()
        self._hooks.after_compile(self._proxy, self._env.random_state)
        # The scene size dm_control's Camera would allocate for this model.
        self._renderer.new_episode(model, placeholder_textures, wrapper.MjvScene(model=physics.model).maxgeom)

        self._callables = {}
        for name, observable in self._task.observables.items():
            if not observable.enabled:
                continue
            if name in self._camera_observables:
                self._callables[name] = self._camera_callable(observable)
            else:
                self._callables[name] = observable.observation_callable(self._proxy, self._env.random_state)
        self._model_address = physics.model.ptr._address
        self._data_address = physics.data.ptr._address

    def _check_substep_hooks(self) -> None:
        """The substep hooks must be exactly those the native loop runs."""
        from dm_control.composer import task as composer_task
        from dm_control.locomotion.props import target_sphere
        from dm_control.locomotion.walkers import legacy_base

        task_type = type(self._task)
        if task_type.before_substep is not composer_task.Task.before_substep or \
                task_type.after_substep is not composer_task.Task.after_substep:
            raise _refuse(f"task {task_type.__name__} has its own substep hooks")
        before, after = self._hooks._before_substep, self._hooks._after_substep
        if before.entity_hooks or before.extra_hooks or after.extra_hooks:
            raise _refuse("the env has extra substep hooks")
        expected = 1 + len(self._task._targets)
        functions = [getattr(hook, "__func__", None) for hook in after.entity_hooks]
        if len(functions) != expected or functions[0] is not legacy_base.Walker.after_substep or \
                any(f is not target_sphere.TargetSphere.after_substep for f in functions[1:]) or \
                [hook.__self__ for hook in after.entity_hooks[1:]] != self._task._targets:
            raise _refuse("the after_substep hooks are not the walker's and the targets' "
                          f"({[getattr(f, '__qualname__', f) for f in functions]})")

    def _camera_callable(self, observable: Any) -> Callable[[], np.ndarray]:
        physics = self._physics
        camera_id = physics.model.name2id(observable._mjcf_element.full_identifier, "camera")
        model, data = physics.model.ptr, physics.data.ptr
        width, height, render = observable.width, observable.height, self._renderer.render

        def get_observation() -> np.ndarray:
            return render(model, data, camera_id, width, height)

        return get_observation

    def _bind_targets(self) -> None:
        """Geom and material ids of this episode's targets (6CL variants recreate them)."""
        targets = self._task._targets
        for target in targets:
            _require(target, _TARGET_ATTRIBUTES, type(target).__name__)
            if target._specific_collision_geom_ids:
                raise _refuse("a target activates only on specific geoms")
        self._targets = list(targets)
        self._target_geoms = [int(target._geom_id) for target in targets]
        self._target_materials = [int(self._physics.bind(target._material).element_id) for target in targets]

    # --- step ----------------------------------------------------------------------------------

    def step(self, action: Any) -> Any:
        """One control step; returns a dm_env TimeStep (LAST at the time limit) as upstream does."""
        import dm_env
        from dm_control.rl import control

        if self._action_set is not None:
            action = self._action_set[action]
        proxy, random_state, task = self._proxy, self._env.random_state, self._task
        self._hooks.before_step(proxy, action, random_state)
        targets = self._targets
        done, warning, activated = self._native.run_substeps(
            self._model_address, self._data_address, self._num_substeps, self._physics.legacy_step,
            self._target_geoms, self._target_materials, [target._activated for target in targets])
        for target, now_activated in zip(targets, activated):
            if now_activated:
                target._activated = True
        if warning >= 0:
            import mujoco

            name = list(mujoco.mjtWarning.__members__)[warning]
            raise control.PhysicsError(f"Physics state is invalid. Warning(s) raised: {name}")
        self._hooks.after_step(proxy, random_state)
        reward = task.get_reward(proxy)
        discount = task.get_discount(proxy)
        terminating = task.should_terminate_episode(proxy) or self._physics.time() >= self._env._time_limit
        step_type = dm_env.StepType.LAST if terminating else dm_env.StepType.MID
        return dm_env.TimeStep(step_type, reward, discount, self._observation())

    def _observation(self) -> Any:
        observation: Any = _Observations(self._callables)
        for wrapper in self._observation_wrappers:
            observation = wrapper.observation(observation)
        return observation

    def close(self) -> None:
        """Free our physics and rendering contexts (the composer env is closed by its owner)."""
        self._renderer.close()
        if self._physics is not None:
            self._physics.free()
            self._physics = None
