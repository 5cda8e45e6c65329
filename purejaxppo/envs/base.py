"""The env protocol training sees, the interface of an env family, and what families share (hidden
observations, flattening, fresh starts).

An env is unbatched (training vmaps it) and jittable. `step` auto-resets and reports the two end flags
separately, with the last observation of the finished episode, so GAE can bootstrap on truncation.
Each family's adapter lives in its own module and turns its library's API into this one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ActionSpace:
    """A Discrete space (`n` actions), a MultiDiscrete one (`nvec`: one choice among `nvec[i]` per
    component, `n` their sum) or a Box (`shape`, `low`, `high`). A discrete space is `masked` when its
    env says which actions are legal in each state (`Env.action_mask`)."""

    discrete: bool
    n: int = 0
    shape: tuple[int, ...] = ()
    low: Any = None
    high: Any = None
    nvec: tuple[int, ...] = ()
    masked: bool = False

    @property
    def dim(self) -> int:
        """The number of logits (discrete: `n`, summed over a MultiDiscrete's components) or of action
        components (continuous)."""
        return self.n if self.discrete else int(np.prod(self.shape))

    def describe(self) -> str:
        masked = ", masked" if self.masked else ""
        if self.nvec:
            return f"MultiDiscrete actions {list(self.nvec)}{masked}"
        return f"{self.n} discrete actions{masked}" if self.discrete else f"a Box of shape {self.shape}"

    @classmethod
    def discrete_actions(cls, n: int, masked: bool = False) -> ActionSpace:
        return cls(discrete=True, n=int(n), masked=masked)

    @classmethod
    def multi_discrete(cls, nvec: Any, masked: bool = False) -> ActionSpace:
        """Actions of `len(nvec)` components, each an int32 in [0, nvec[i]); a mask, if any, has `sum(nvec)`
        entries: each component's legal choices, one after the other."""
        nvec = tuple(int(v) for v in np.ravel(nvec))
        return cls(discrete=True, n=sum(nvec), shape=(len(nvec),), nvec=nvec, masked=masked)

    @classmethod
    def box(cls, low: Any, high: Any, shape: tuple[int, ...]) -> ActionSpace:
        """A Box with bounds broadcast to `shape`, as float32 arrays."""
        shape = tuple(int(s) for s in shape)
        return cls(discrete=False, shape=shape, low=np.broadcast_to(np.asarray(low, np.float32), shape),
                   high=np.broadcast_to(np.asarray(high, np.float32), shape))


class EnvStep(NamedTuple):
    obs: jax.Array  # first obs of the next episode where the episode ended
    state: Any
    reward: jax.Array  # float32 scalar
    terminated: jax.Array  # bool scalar: the episode reached a terminal state (no bootstrap)
    truncated: jax.Array  # bool scalar: cut by a time limit (bootstrap on V(final_obs))
    final_obs: jax.Array  # obs the transition reached, before any reset


@runtime_checkable
class Env(Protocol):
    """What training needs of an env. `observation_shape` is the float32 observation's shape;
    actions arrive as an int32 scalar (discrete), int32 array (MultiDiscrete) or float32 array of
    `action_space.shape`.

    Optional members, read with `getattr`:
    - `action_mask(state) -> bool[action_space.n]`, required when `action_space.masked`: the actions
      legal in `state` (after an auto-reset, in the new episode's first state).
    - `image_shape`: `(H, W, C)` when the (flat) observation is an image, raveled in C order; a CNN
      torso reshapes it back.
    - `step_without_reset(key, state, action) -> EnvStep`: `step` without its reset (`obs` is
      `final_obs`, `state` the one reached), for `resets_per_step` (see `step_all`).
    - `render(state) -> uint8[H, W, 3]`: one frame of an (unbatched) state, on the host, for
      `purejaxppo render`; every frame of an env the same size.
    """

    observation_shape: tuple[int, ...]
    action_space: ActionSpace

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]: ...

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep: ...


@runtime_checkable
class Family(Protocol):
    """What an env family's module gives (`envs.gymnax`, `envs.brax`, ...; the registry finds a family by
    its names' prefix and imports its module only when one of them is used):

    - `names()`: the names it trains, prefix included;
    - `refuse(name)`: ConfigError, in one line, for a name it knows but cannot train here (one that
      downloads at construction, several agents); nothing otherwise;
    - `make(name, env_kwargs)`: the env, its library's parameters set from `env_kwargs` (ConfigError for a
      bad one).
    """

    def names(self) -> list[str]: ...

    def refuse(self, name: str) -> None: ...

    def make(self, name: str, env_kwargs: dict[str, Any]) -> Env: ...


@runtime_checkable
class ObjectFamily(Family, Protocol):
    """A family whose library's env objects may be given from Python (gymnax's, Brax's state API), which
    recognises and adapts its own:

    - `owns(obj)`: whether an env object is one of its library's kind;
    - `adapt(obj, label)`: that object as an Env, `label` naming it in messages.
    """

    def owns(self, obj: Any) -> bool: ...

    def adapt(self, obj: Any, label: str) -> Env: ...


def refuses_nothing(name: str) -> None:
    """`Family.refuse` of a family that trains every name it lists."""


def kept_components(size: int, hidden: tuple[int, ...]) -> np.ndarray:
    """The indices of a flat observation of `size` components that `hidden` (obs_mask) leaves in view."""
    return np.array([i for i in range(size) if i not in set(hidden)], np.int32)


def in_view(size: int, hidden: tuple[int, ...]) -> Callable[[jax.Array], jax.Array]:
    """What a policy sees of (a batch of) flat observations of `size` components, with obs_mask's `hidden`
    components dropped: the env's observations as they are, where none is hidden."""
    if not hidden:
        return lambda obs: obs
    keep = kept_components(size, hidden)
    return lambda obs: obs[..., keep]


class HiddenObs:
    """Any env with chosen components of its flat observation removed, so the policy never sees them:
    a partially observed version of a fully observed task. Everything else passes through."""

    def __init__(self, env: Env, hidden: tuple[int, ...]) -> None:
        size = int(np.prod(env.observation_shape))
        if len(env.observation_shape) != 1:
            raise ConfigError(f"obs_mask: needs a flat observation; this env's has shape {env.observation_shape}")
        outside = [i for i in hidden if not 0 <= i < size]
        if outside:
            raise ConfigError(f"obs_mask: index {outside[0]} is outside this env's {size} observation components "
                              f"(0..{size - 1})")
        self._keep = kept_components(size, hidden)
        if self._keep.size == 0:
            raise ConfigError(f"obs_mask: hides all {size} observation components, leaving the policy nothing")
        self.env = env
        self.observation_shape = (int(self._keep.size),)
        self.action_space = env.action_space
        self.image_shape = None  # with components hidden, the observation is no longer an image
        if callable(getattr(env, "step_without_reset", None)):
            self.step_without_reset = self._step_without_reset

    def __getattr__(self, attr: str) -> Any:  # e.g. an env's render
        if attr == "env":  # not set yet (or being copied): no recursion
            raise AttributeError(attr)
        return getattr(self.env, attr)

    def hide(self, obs: jax.Array) -> jax.Array:
        """The components of the wrapped env's (flat) observations the policy sees."""
        return obs[..., self._keep]

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        obs, state = self.env.reset(key)
        return self.hide(obs), state

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        return self._hidden(self.env.step(key, state, action))

    def _step_without_reset(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        return self._hidden(self.env.step_without_reset(key, state, action))

    def _hidden(self, out: EnvStep) -> EnvStep:
        return out._replace(obs=self.hide(out.obs), final_obs=self.hide(out.final_obs))


def channels_image(grid: Any, scale: int = 16) -> np.ndarray:
    """An (H, W, C) grid of channels (MinAtar's, a symbolic grid's) as an RGB image: each cell in the
    colour of its highest active channel, black where none is, each cell `scale` pixels wide."""
    grid = np.asarray(grid, np.float32)
    channels = grid.shape[-1]
    palette = np.array([[0, 0, 0]] + [colorsys_rgb(k / max(1, channels)) for k in range(channels)], np.uint8)
    active = grid > 0
    index = np.where(active.any(-1), channels - np.argmax(active[..., ::-1], axis=-1), 0)
    return np.kron(palette[index], np.ones((scale, scale, 1), np.uint8)).astype(np.uint8)


def colorsys_rgb(hue: float) -> list[int]:
    """A bright colour of `hue` in [0, 1), as 0-255 RGB."""
    import colorsys

    return [int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.65, 0.95)]


def unmasked(env: Env) -> Env:
    """An env as it was before obs_mask hid any of its observation's components."""
    return env.env if isinstance(env, HiddenObs) else env


def action_masks(env: Env, states: Any) -> jax.Array | None:
    """The legal actions in each of a batch of env states, for an env whose action space is masked."""
    return jax.vmap(env.action_mask)(states) if env.action_space.masked else None


def shared_resets(done: jax.Array, count: int) -> jax.Array:
    """Which of `count` fresh starts each env takes where `done` (elsewhere the value is unused): the k-th
    env to end in the step, in env order, takes start k mod count, so up to `count` envs that end together
    start apart, and any more share starts."""
    return (jnp.cumsum(done.astype(jnp.int32)) - 1) % count


def where_done(done: jax.Array, new: Any, old: Any) -> Any:
    """`new` where `done`, else `old`, leaf by leaf over two pytrees of one structure; `done` (a scalar for
    one env, or one flag per env of a batch) broadcasts over each leaf's trailing axes. Typed PRNG keys,
    which jnp.where refuses, go through lax.select."""
    done = jnp.asarray(done)

    def pick(a: Any, b: Any) -> jax.Array:
        a, b = jnp.asarray(a), jnp.asarray(b)  # a leaf may be a Python number (some libraries' states hold them)
        flag = done.reshape(done.shape + (1,) * (b.ndim - done.ndim))
        if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key):
            return jax.lax.select(jnp.broadcast_to(flag, b.shape), a, b)
        return jnp.where(flag, a, b)

    return jax.tree.map(pick, new, old)


def step_all(env: Env, key: jax.Array, states: Any, actions: jax.Array, resets: int = 0) -> EnvStep:
    """One step of a batch of envs (the leading axis), auto-reset where an episode ended.

    `resets` 0: each env's own `step`, which draws a reset for every env (under vmap both sides of its
    select run). `resets` R: the envs step without resetting, R fresh starts are drawn for the whole
    batch, and the envs that ended take them in turn (`shared_resets`): R resets per step instead of
    one per env, for envs whose reset costs far more than a step (Craftax's world generation).
    """
    n = actions.shape[0]
    if not resets:
        return jax.vmap(env.step)(jax.random.split(key, n), states, actions)
    k_step, k_reset = jax.random.split(key)
    out = jax.vmap(env.step_without_reset)(jax.random.split(k_step, n), states, actions)
    fresh_obs, fresh = jax.vmap(env.reset)(jax.random.split(k_reset, resets))
    done = out.terminated | out.truncated
    pick = shared_resets(done, resets)
    starts = jax.tree.map(lambda x: x[pick], (fresh_obs, fresh))
    obs, state = where_done(done, starts, (out.obs, out.state))
    return out._replace(obs=obs, state=state)


def abstract_key(*shape: int) -> jax.ShapeDtypeStruct:
    """The shape and dtype of a PRNG key (or of `shape` of them), for tracing without making one: a made
    key would run, and compile, its seeding."""
    return jax.ShapeDtypeStruct(shape, jax.eval_shape(lambda: jax.random.key(0)).dtype)


def abstract_action(space: ActionSpace) -> jax.ShapeDtypeStruct:
    """The shape and dtype of one action in `space`, for tracing an env's `step`."""
    return jax.ShapeDtypeStruct(tuple(space.shape), jnp.int32 if space.discrete else jnp.float32)


def image_shape(env: Any) -> tuple[int, int, int] | None:
    """The `(H, W, C)` image an env's flat observation is, if it declares one."""
    shape = getattr(env, "image_shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def described(out: Any) -> str:
    """What an env method returned, for a message: `5 values` or `a dict`."""
    return f"{len(out)} values" if isinstance(out, tuple) else f"a {type(out).__name__}"


def flat(obs: Any) -> jax.Array:
    """An observation (an array, or any pytree of them, e.g. a dict) as one float32 vector, for an MLP:
    its leaves in the pytree's order, each raveled in C order."""
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(obs)])


def flat_shape(obs: Any) -> tuple[int]:
    """The shape `flat` gives an observation (arrays or shapes of them, any pytree)."""
    return (sum(int(np.prod(x.shape)) for x in jax.tree.leaves(obs)),)


def image_of(obs: Any) -> tuple[int, int, int] | None:
    """The `(H, W, C)` shape of an observation that is one image (a single array of rank 3), else None."""
    leaves = jax.tree.leaves(obs)
    return tuple(int(s) for s in leaves[0].shape) if len(leaves) == 1 and leaves[0].ndim == 3 else None


# what the user's code may raise while it is imported, built or traced: a `sys.exit()` in it too
USER_ERRORS = (Exception, SystemExit)


def traced(label: str, what: str, fn: Any) -> Any:
    """`fn()`, with an exception raised while it traces the user's env turned into one ConfigError line."""
    try:
        return fn()
    except ConfigError:
        raise
    except USER_ERRORS as err:
        raise ConfigError(f"env: {label}.{what} failed when traced: {one_line(err)}") from err


def one_line(err: BaseException) -> str:
    """An exception as `Type: message` on one line, for a ConfigError that quotes a library's error."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
