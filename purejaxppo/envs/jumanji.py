"""Jumanji: `jumanji/<name>`, InstaDeep's combinatorial and grid tasks (Maze-v0, Snake-v1, Game2048-v1,
BinPack-v2, JobShop-v0, Tetris-v0, ...). Needs the `jumanji` extra.

How the end flags are known (read in jumanji 1.1.2): `types.py` makes a LAST TimeStep with discount 0
in `termination` and with discount 1 in `truncation`, but the envs' `step` (e.g. `routing/maze/env.py`,
`routing/snake/env.py`, `packing/tetris/env.py`) end an episode at `step_count >= self.time_limit`
through `termination`, the same call as a reached goal or a crash: the discount cannot tell a time limit
apart. So for an env whose constructor takes `time_limit`, the adapter owns the limit: it reads the
env's own `time_limit` (its default, or the one env_kwargs set), builds the env with a limit one step
longer, which that env then never reaches, and truncates at the original one itself. A LAST step with
discount 0 is then a termination, and any other end (the limit, or a library `truncation`) a
truncation. Jumanji never resets itself (`env.py`): the adapter resets from the step's key.

Observations are the TimeStep's observation without its `action_mask` field, flattened; the mask
goes to the policy through `action_mask`. Actions follow `action_spec` (`specs.py`): a DiscreteArray is
Discrete; a MultiDiscreteArray (or an integer BoundedArray from 0) whose mask has one entry per
combination (BinPack, Tetris, Minesweeper, Sudoku, FlatPack) is one Discrete over all combinations,
unraveled in C order for the env; one whose mask has a row per component (JobShop, Cleaner, MMST,
RobotWarehouse) is MultiDiscrete. Refused: Sokoban-v0, whose constructor downloads DeepMind's Boxoban
levels (`routing/sokoban/generator.py`), and the envs with one reward per agent.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo.envs.base import (
    ActionSpace,
    EnvStep,
    abstract_key,
    flat,
    flat_shape,
    image_of,
    one_line,
    where_done,
)
from purejaxppo.envs.brax import positive_int
from purejaxppo.errors import ConfigError

PREFIX = "jumanji/"
MASK = "action_mask"
# Registered envs refused by name, with why; `make` also refuses any other env whose reward or
# discount is not a scalar.
REFUSED = {
    "Sokoban-v0": "downloads DeepMind's Boxoban levels from the internet when it is made, and purejaxppo "
                  "loads nothing from the internet at run time",
    "Connector-v3": "gives one reward per agent (10 agents), and purejaxppo trains on one scalar reward",
    "LevelBasedForaging-v0": "gives one reward per agent, and purejaxppo trains on one scalar reward",
    "SearchAndRescue-v0": "gives one reward per agent, and purejaxppo trains on one scalar reward",
}


def _jumanji() -> Any:
    import jumanji

    return jumanji


def names() -> list[str]:
    return sorted(PREFIX + n for n in _jumanji().registered_environments() if n not in REFUSED)


def refuse(name: str) -> None:
    """Refuse a Jumanji env that would download data or that has one reward per agent."""
    why = REFUSED.get(name.removeprefix(PREFIX))
    if why:
        raise ConfigError(f"env: {name} {why}")


class JumanjiState(NamedTuple):
    env: Any  # the library's own state
    mask: Any  # bool[action_space.n], the legal actions now; None for an env without a mask
    t: jax.Array  # int32 steps taken in this episode, for the time limit the adapter owns


def _is_mask(path: tuple[Any, ...]) -> bool:
    top = path[0] if path else None
    return getattr(top, "name", getattr(top, "key", None)) == MASK


def split_obs(obs: Any) -> tuple[list[jax.Array], jax.Array | None]:
    """A Jumanji observation (NamedTuple, dataclass or dict) as the arrays the policy sees, in the
    pytree's order, and its top-level `action_mask` (None if it has none)."""
    leaves = jax.tree_util.tree_flatten_with_path(obs)[0]
    masks = [x for p, x in leaves if _is_mask(p)]
    return [x for p, x in leaves if not _is_mask(p)], (masks[0] if masks else None)


def _identity_mask(mask: jax.Array) -> jax.Array:
    return jnp.ravel(mask).astype(bool)


def _per_component(nvec: tuple[int, ...]) -> Any:
    """A mask with a row per component as each component's legal choices, one after the other; choices
    past a row's end (an integer BoundedArray whose bound exceeds its mask) are illegal."""

    def mask_of(mask: jax.Array) -> jax.Array:
        rows = []
        for i, n in enumerate(nvec):
            row = mask[i, :n].astype(bool)
            rows.append(jnp.pad(row, (0, n - row.shape[0])))
        return jnp.concatenate(rows)

    return mask_of


def action_space_of(spec: Any, mask_shape: tuple[int, ...] | None, name: str) -> tuple[ActionSpace, Any, Any]:
    """The ActionSpace of a Jumanji action spec, the function that turns the policy's action into the
    env's, and the one that turns the observation's mask into `bool[n]` (None when unmasked)."""
    from jumanji import specs

    dtype = spec.dtype
    masked = mask_shape is not None
    integer = np.issubdtype(dtype, np.integer)
    if isinstance(spec, specs.DiscreteArray):
        nvec: tuple[int, ...] | None = None
        n = int(spec.num_values)
    elif isinstance(spec, specs.MultiDiscreteArray) and len(spec.shape) == 1:
        nvec = tuple(int(v) for v in np.ravel(spec.num_values))
    elif isinstance(spec, specs.BoundedArray) and integer and len(spec.shape) <= 1 and np.all(spec.minimum == 0):
        maximum = np.broadcast_to(spec.maximum, spec.shape)
        nvec = tuple(int(v) + 1 for v in np.ravel(maximum)) if spec.shape else None
        n = int(np.ravel(maximum)[0]) + 1
    elif isinstance(spec, specs.BoundedArray) and np.issubdtype(dtype, np.floating):
        space = ActionSpace.box(spec.minimum, spec.maximum, tuple(spec.shape))
        return space, lambda a: jnp.asarray(a, dtype), None
    else:
        raise ConfigError(f"env: {name}: its action spec {spec!r} is none that purejaxppo takes (Discrete, "
                          f"MultiDiscrete or a bounded float Box)")
    if nvec is None:
        if masked and mask_shape != (n,):
            raise ConfigError(f"env: {name}: its action_mask has shape {mask_shape}, not ({n},) for its {n} actions")
        space = ActionSpace.discrete_actions(n, masked)
        return space, lambda a: jnp.asarray(a, dtype), _identity_mask if masked else None
    if min(nvec) < 1:
        raise ConfigError(f"env: {name}: its action spec has a component with no choice ({list(nvec)})")
    if not masked:
        return ActionSpace.multi_discrete(nvec), lambda a: jnp.asarray(a, dtype), None
    joint = mask_shape == nvec
    rows = len(mask_shape) == 2 and mask_shape[0] == len(nvec)
    if joint and rows:  # e.g. nvec (2, 2): a 2x2 mask could be either
        raise ConfigError(f"env: {name}: its action_mask of shape {mask_shape} could mask either each "
                          f"combination of {list(nvec)} or each component, and purejaxppo cannot tell which")
    if joint:
        # One Discrete over every combination: the only way a policy can respect a joint mask.
        def unravel(a: jax.Array) -> jax.Array:
            return jnp.stack(jnp.unravel_index(a, nvec)).astype(dtype)

        return ActionSpace.discrete_actions(int(np.prod(nvec)), True), unravel, _identity_mask
    if rows:
        return ActionSpace.multi_discrete(nvec, True), lambda a: jnp.asarray(a, dtype), _per_component(nvec)
    raise ConfigError(f"env: {name}: its action_mask of shape {mask_shape} fits neither every combination of "
                      f"its MultiDiscrete actions {list(nvec)} nor a row per component")


def _build(name: str, env_kwargs: dict[str, Any]) -> Any:
    try:
        return _jumanji().make(name.removeprefix(PREFIX), **env_kwargs)
    except Exception as err:  # the library's refusal (an unknown or bad argument), in one line
        raise ConfigError(f"env_kwargs: {name} rejected {env_kwargs}: {one_line(err)}") from err


def _takes_time_limit(env: Any) -> bool:
    try:
        return "time_limit" in inspect.signature(type(env)).parameters
    except (TypeError, ValueError):
        return False


class JumanjiEnv:
    """A Jumanji env behind the adapter interface (see the module's docstring)."""

    def __init__(self, name: str, env_kwargs: dict[str, Any] | None = None) -> None:
        env_kwargs = dict(env_kwargs or {})
        self.name = name
        if "time_limit" in env_kwargs:
            positive_int(env_kwargs, "time_limit", 1, name)
        env = _build(name, env_kwargs)
        limit = getattr(env, "time_limit", None)
        self.time_limit: int | None = None
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1 and _takes_time_limit(env):
            self.time_limit = limit
            env = _build(name, {**env_kwargs, "time_limit": limit + 1})
        self._env = env

        state, ts = jax.eval_shape(env.reset, abstract_key())
        obs, mask = split_obs(ts.observation)
        if not obs:
            raise ConfigError(f"env: {name}: its observation holds nothing but the action mask")
        mask_shape = None if mask is None else tuple(int(s) for s in mask.shape)
        self.action_space, self._to_env, self._mask_of = action_space_of(env.action_spec, mask_shape, name)
        self.image_shape = image_of(obs)
        self.observation_shape = flat_shape(obs)
        action = jax.ShapeDtypeStruct(self.action_space.shape, jnp.int32 if self.action_space.discrete
                                      else jnp.float32)
        try:
            _, stepped = jax.eval_shape(lambda s, a: env.step(s, self._to_env(a)), state, action)
        except Exception as err:  # an action the adapter's conversion gets wrong, or a broken env
            raise ConfigError(f"env: {name}: its step does not trace with {self.action_space.describe()}: "
                              f"{one_line(err)}") from err
        for field in ("reward", "discount"):
            shape = getattr(stepped, field).shape
            if shape != ():
                raise ConfigError(f"env: {name} gives a {field} of shape {tuple(shape)} (one per agent), and "
                                  f"purejaxppo trains on one scalar reward")

    def render(self, state: JumanjiState) -> np.ndarray:
        """One frame: the env's own matplotlib viewer, drawn off screen."""
        import matplotlib

        matplotlib.use("Agg")
        viewer = getattr(self._env, "_viewer", None)
        # Jumanji's viewers return the frame only when built with render_mode="rgb_array", which its envs
        # do not let a caller choose; the viewer's own drawing to an array is switched on instead
        if not callable(getattr(viewer, "_display_rgb_array", None)):
            raise ConfigError(f"render: {self.name} has no viewer that draws to an image")
        viewer._display = viewer._display_rgb_array
        frame = self._env.render(jax.tree.map(jnp.asarray, state.env))  # its viewers index with jax's .at
        return np.asarray(frame)[..., :3].astype(np.uint8)

    def _observe(self, ts: Any) -> tuple[jax.Array, Any]:
        obs, mask = split_obs(ts.observation)
        return flat(obs), None if self._mask_of is None else self._mask_of(mask)

    def reset(self, key: jax.Array) -> tuple[jax.Array, JumanjiState]:
        env_state, ts = self._env.reset(key)
        obs, mask = self._observe(ts)
        return obs, JumanjiState(env_state, mask, jnp.zeros((), jnp.int32))

    def step(self, key: jax.Array, state: JumanjiState, action: jax.Array) -> EnvStep:
        env_state, ts = self._env.step(state.env, self._to_env(action))
        obs, mask = self._observe(ts)
        t = state.t + 1
        last = ts.last()
        terminated = last & (ts.discount == 0)
        ended = last if self.time_limit is None else last | (t >= self.time_limit)
        truncated = ended & ~terminated
        done = terminated | truncated
        new_obs, new = where_done(done, self.reset(key), (obs, JumanjiState(env_state, mask, t)))
        return EnvStep(
            obs=new_obs,
            state=new,
            reward=jnp.asarray(ts.reward, jnp.float32),
            terminated=terminated,
            truncated=truncated,
            final_obs=obs,
        )

    def action_mask(self, state: JumanjiState) -> jax.Array:
        """The legal actions in `state` (all of them for an env without a mask)."""
        if state.mask is None:
            return jnp.ones((self.action_space.n,), bool)
        return state.mask


def make(name: str, env_kwargs: dict[str, Any]) -> JumanjiEnv:
    return JumanjiEnv(name, env_kwargs)
