"""The programs a population runs: its init, and a chunk of `chunk_size` updates over every stacked run,
ending with the in-program evaluation and, for PBT, its exploit-and-explore step. A single run is
sliced out of the run axis rather than vmapped, so it compiles to the program of one unbatched run."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from purejaxppo.program.evaluation import evaluation_return
from purejaxppo.program.ppo import PPO, Metrics, TrainState


def over_runs(fn: Any, num_runs: int, in_axes: tuple = (0,)) -> Any:
    """`fn` mapped over the leading run axis of the arguments `in_axes` marks 0. One run is sliced out and
    back in rather than vmapped, so a single run compiles to the program of one unbatched run."""
    if num_runs > 1:
        return jax.vmap(fn, in_axes=in_axes)

    def single(*args: Any) -> Any:
        args = [jax.tree.map(lambda x: x[0], a) if axis == 0 else a for a, axis in zip(args, in_axes)]
        return jax.tree.map(lambda x: x[None], fn(*args))

    return single


def init_program(ppo: PPO, num_runs: int) -> Any:
    """`init(seeds, hparams) -> states` over stacked runs."""
    return over_runs(lambda seed, hp: ppo.init(jax.random.key(seed), hp), num_runs, (0, 0))


class ChunkOut(NamedTuple):
    """What one call of a chunk program gives back, for every stacked run."""

    states: TrainState
    metrics: Metrics  # each [runs, chunk_size]; updates past the active ones are zeros
    params_finite: jax.Array  # [runs], for the NaN guard


def chunk_program(ppo: PPO, num_runs: int = 2, step: Any = None) -> Any:
    """`chunk(states, first_update, num_active) -> ChunkOut(states, metrics, params_finite)` over stacked runs.

    `chunk_size` updates in one scan; updates past `num_active` leave a state untouched and report zeros
    (the host drops them), so one compiled chunk also serves the shorter last one. With `eval_every`,
    the chunk ends with deterministic evaluation episodes when it crossed a multiple of eval_every (or
    finished the run), reported as `eval_return` on its last active update. The update counts are the
    host's, shared by every run, so the evaluation stays a branch under the run axis's vmap rather
    than a select that would evaluate every chunk. `params_finite` (per run) feeds the NaN guard.
    `step(ppo, states, metrics, params_finite, first_update, num_active) -> (states, more metrics)`
    then acts on all the runs at once (PBT's exploit and explore, `pbt_step.Exploit`).
    """
    config = ppo.config

    def one_run(state: TrainState, first_update: jax.Array, num_active: jax.Array) -> tuple[TrainState, Metrics, Any]:
        metrics_shape = jax.eval_shape(ppo.update, state)[1]

        def skip(s: TrainState) -> tuple[TrainState, Metrics]:
            return s, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics_shape)

        def body(s: TrainState, i: jax.Array) -> tuple[TrainState, Metrics]:
            return jax.lax.cond(i < num_active, ppo.update, skip, s)

        state, metrics = jax.lax.scan(body, state, jnp.arange(config.chunk_size))
        if config.eval_every:
            done, every = first_update + num_active, config.eval_every
            due = (done // every > first_update // every) | (done == config.num_updates)
            value = jax.lax.cond(due, lambda s: evaluation_return(ppo, s), lambda s: jnp.float32(jnp.nan), state)
            metrics["eval_return"] = jnp.full(config.chunk_size, jnp.nan).at[num_active - 1].set(value)
        finite = [jnp.isfinite(x).all() for x in jax.tree.leaves(state.params)]
        return state, metrics, jnp.stack(finite).all()

    chunk = over_runs(one_run, num_runs, (0, None, None))

    def program(states: TrainState, first_update: jax.Array, num_active: jax.Array) -> ChunkOut:
        states, metrics, finite = chunk(states, first_update, num_active)
        if step is not None:
            states, more = step(ppo, states, metrics, finite, first_update, num_active)
            metrics = {**metrics, **more}
        return ChunkOut(states, metrics, finite)

    return program
