"""Brax: the `brax/<name>` family, and the adapter for any env with Brax's state API (a Brax
`PipelineEnv`, or a MuJoCo Playground `MjxEnv`): `reset(rng) -> State`, `step(State, action) -> State`,
with `obs`, `reward`, `done` and an `info` dict on the State, and `action_size`.

Only Brax's EpisodeWrapper is used: its AutoResetWrapper would replay one cached initial state, so
`step` draws a fresh initial state from the step's key when an episode ends. The EpisodeWrapper sets
`info["truncation"]` to 1 - done at the time limit, so an env that terminates on the last step
reports termination only.
"""

from __future__ import annotations

import atexit
import inspect
import os
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo.envs.base import ActionSpace, EnvStep, abstract_key, flat, refuses_nothing, traced, where_done
from purejaxppo.errors import ConfigError, unknown_key

PREFIX = "brax/"
EPISODE_LENGTH = 1000  # Brax's, and Playground's DM Control suite's, time limit when none is given
BACKENDS = ("generalized", "positional", "spring", "mjx")
FRAME_SIZE = (240, 320)  # height, width of a rendered frame

# MuJoCo picks its OpenGL backend when it is first imported: without a display, EGL (headless). Where EGL
# is missing, MuJoCo still imports, and only a renderer fails (`MujocoFrames` says what to install).
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"


class MujocoFrames:
    """MuJoCo's renderer over a model: a frame of the positions and velocities of a state. Each thread
    that draws gets a renderer and data of its own: an OpenGL (EGL) context is current in one thread only,
    and training videos are drawn in a worker thread."""

    def __init__(self, model: Any) -> None:
        import mujoco

        self._mujoco, self._model = mujoco, model
        self._camera = 0 if model.ncam > 0 else -1  # the model's first camera (ant's tracks it), else a free one
        self._local = threading.local()

    def _drawing(self) -> tuple[Any, Any]:
        """This thread's renderer and data."""
        if getattr(self._local, "renderer", None) is None:
            try:
                renderer = self._mujoco.Renderer(self._model, *FRAME_SIZE)
            except Exception as err:  # no OpenGL backend: MuJoCo raises many kinds
                backend = os.environ.get("MUJOCO_GL", "glfw")
                raise ConfigError(f"render: MuJoCo's renderer could not start with MUJOCO_GL={backend} "
                                  f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); headless, it "
                                  f"needs EGL (libegl1) or OSMesa (libosmesa6, with MUJOCO_GL=osmesa)") from None
            if threading.current_thread() is threading.main_thread():
                # closed while Python still runs: at interpreter teardown its own close fails, and says so
                # (a worker thread's is closed with the thread, in it: a context closes where it is current)
                atexit.register(renderer.close)
            self._local.renderer, self._local.data = renderer, self._mujoco.MjData(self._model)
        return self._local.renderer, self._local.data

    def __call__(self, qpos: Any, qvel: Any) -> np.ndarray:
        renderer, data = self._drawing()
        data.qpos[:], data.qvel[:] = np.asarray(qpos), np.asarray(qvel)
        self._mujoco.mj_forward(self._model, data)
        renderer.update_scene(data, camera=self._camera)
        return np.asarray(renderer.render(), np.uint8)

WRAPPER_KWARGS = ("episode_length", "action_repeat")



class StateEnv:
    """An env with Brax's state API behind the adapter interface. As in Brax, `episode_length` counts
    base-env steps, so an episode lasts episode_length / action_repeat agent steps, and the reward is
    summed over the repeats. Actions are in [-1, 1]."""

    def __init__(self, env: Any, episode_length: int = EPISODE_LENGTH, action_repeat: int = 1,
                 name: str | None = None) -> None:
        from brax.envs.wrappers.training import EpisodeWrapper

        self.name = name or type(env).__name__
        self.base = env
        self._env = EpisodeWrapper(env, episode_length, action_repeat)
        # Tracing a physics step in Python takes a second or more (MJX), and a run traces its env's reset and
        # step many times (shapes, init, rollout, evaluation, the reset inside every step). Jitted, each is
        # traced once per shape and enters every program as a call.
        self._reset, self._step = jax.jit(self._env.reset), jax.jit(self._env.step)
        size = int(env.action_size)
        self.action_space = ActionSpace.box(-1.0, 1.0, (size,))
        # `observation_size` would run an un-jitted reset; tracing the shape is near free.
        obs = jax.eval_shape(self.reset, abstract_key())[0]
        self.observation_shape = tuple(obs.shape)

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        state = self._reset(key)
        return flat(state.obs), state

    def render(self, state: Any) -> np.ndarray:
        """One frame of the scene, by MuJoCo's renderer (headless: EGL)."""
        if getattr(self, "_frames", None) is None:
            self._frames = MujocoFrames(self.mj_model())
        return self._frames(*self.positions(state))

    def mj_model(self) -> Any:
        """The MuJoCo model the scene is drawn from."""
        return self.base.sys.mj_model

    def positions(self, state: Any) -> tuple[Any, Any]:
        """A state's joint positions and velocities, as MuJoCo's qpos and qvel."""
        return state.pipeline_state.q, state.pipeline_state.qd

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        stepped = self._step(state, action)
        done = stepped.done > 0
        truncated = stepped.info["truncation"] > 0
        obs, fresh = self.reset(key)
        final_obs = flat(stepped.obs)
        return EnvStep(
            obs=jnp.where(done, obs, final_obs),
            state=where_done(done, fresh, stepped),
            reward=jnp.asarray(stepped.reward, jnp.float32),
            terminated=done & ~truncated,
            truncated=truncated,
            final_obs=final_obs,
        )


class BraxEnv(StateEnv):
    """A Brax env named `brax/<name>` (any name in `brax.envs`).

    env_kwargs: `backend` (one of BACKENDS; default `positional`, or `generalized` for envs that reject
    positional, e.g. swimmer), `episode_length` (default 1000), `action_repeat` (default 1); any other
    key goes to the env's constructor (e.g. `ctrl_cost_weight`, `n_frames`).
    """

    def __init__(self, name: str, env_kwargs: dict[str, Any] | None = None) -> None:
        base, episode_length, action_repeat = _make_base(name, env_kwargs or {})
        super().__init__(base, episode_length, action_repeat, name)


def _kwarg_names(env_class: type) -> set[str]:
    """Constructor keywords of a Brax env class, following `**kwargs` up to PipelineEnv."""
    names: set[str] = set()
    for cls in env_class.__mro__:
        if "__init__" not in vars(cls):
            continue
        params = inspect.signature(cls.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names - {"self", "sys"}


def positive_int(env_kwargs: dict[str, Any], key: str, default: int, name: str) -> int:
    value = env_kwargs.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"env_kwargs.{key}: must be an integer >= 1 for {name}, got {value!r}")
    return value


def _make_base(name: str, env_kwargs: dict[str, Any]) -> tuple[Any, int, int]:
    """Validate env_kwargs and build the unwrapped Brax env (loads the model; compiles nothing)."""
    import brax.envs

    env_class = brax.envs._envs[name.removeprefix(PREFIX)]
    known = _kwarg_names(env_class) | {"backend", *WRAPPER_KWARGS}
    for key in env_kwargs:
        if key not in known:
            raise unknown_key(key, known, what=f"env_kwargs parameter of {name}")
    episode_length = positive_int(env_kwargs, "episode_length", EPISODE_LENGTH, name)
    action_repeat = positive_int(env_kwargs, "action_repeat", 1, name)
    rest = {k: v for k, v in env_kwargs.items() if k not in ("backend", *WRAPPER_KWARGS)}
    backend = env_kwargs.get("backend")
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"env_kwargs.backend: unknown Brax backend {backend!r}; known: {', '.join(BACKENDS)}")
    try:
        if backend is None:
            try:
                return env_class(backend="positional", **rest), episode_length, action_repeat
            except ValueError:  # e.g. swimmer supports generalized only
                backend = "generalized"
        return env_class(backend=backend, **rest), episode_length, action_repeat
    except (TypeError, ValueError) as err:
        message = " ".join(str(err).split())  # ConfigError messages are one line
        raise ConfigError(f"env_kwargs: {name} rejected {env_kwargs}: {message}") from err


def names() -> list[str]:
    import brax.envs

    # brax 0.14 has no public listing of its registry
    return [PREFIX + n for n in brax.envs._envs]


def make(name: str, env_kwargs: dict[str, Any]) -> BraxEnv:
    return BraxEnv(name, env_kwargs)


def is_training_wrapped(obj: Any) -> bool:
    """Whether `obj` is wrapped by Brax's training wrappers (`brax.envs.create` wraps by default): its
    EpisodeWrapper would count steps beside the adapter's own."""
    return type(obj).__module__.startswith("brax.envs.wrappers") or type(obj).__module__.startswith(
        "mujoco_playground._src.wrapper")


def owns(obj: Any) -> bool:
    """Whether `obj` has Brax's state API (a Brax PipelineEnv or a Playground MjxEnv)."""
    return all(callable(getattr(obj, a, None)) for a in ("reset", "step")) and hasattr(obj, "action_size")


def adapt(obj: Any, label: str) -> StateEnv:
    """An env object with Brax's state API, unwrapped, as an Env. Playground keeps a task's time limit in its
    config; a Brax env's is the adapter's default."""
    if is_training_wrapped(obj):
        raise ConfigError(f"env: {label} is wrapped by {type(obj).__name__}; give the env unwrapped (e.g. "
                          f"brax.envs.get_environment(name)): purejaxppo adds its own time limit and resets")
    config = getattr(obj, "_config", None)
    episode_length = int(getattr(config, "episode_length", EPISODE_LENGTH))
    action_repeat = int(getattr(config, "action_repeat", 1))
    return traced(label, "reset", lambda: StateEnv(obj, episode_length, action_repeat, label))


refuse = refuses_nothing
