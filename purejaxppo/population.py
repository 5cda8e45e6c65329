"""A population: the runs that one compiled program trains side by side, and how they are laid out.

A single run is a population of one. Each member has a seed and the traced hyperparameter values it
changes from the config. The members' training states are stacked on a leading run axis and advance
together, `chunk_size` updates per call of one compiled chunk program. The program is laid out on a
device mesh with a "runs" and an "envs" axis: several runs are split over the devices along the run
axis (padded to a multiple of the device count, in calls of equal size when they do not fit in one),
and a single run's envs are split along the env axis, over the devices of every process.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from purejaxppo import acting, limits
from purejaxppo.config import TRACED, ConfigError, PPOConfig
from purejaxppo.hparams import HParams
from purejaxppo.limits import gib, nbytes
from purejaxppo.train import ENV_AXIS_FIELDS, Trainer, TrainState, abstract_states

Metrics = dict[str, jax.Array]
METRICS_PER_UPDATE = 48  # a bound on the metrics one run reports per update (about 20 without variants)


@dataclasses.dataclass(frozen=True)
class Member:
    seed: int
    values: Mapping[str, float] = dataclasses.field(default_factory=dict)  # traced keys that differ from the config
    point: int = 0  # the grid point it belongs to, for grouping seeds


@dataclasses.dataclass(frozen=True)
class Population:
    config: PPOConfig
    members: tuple[Member, ...]
    # what happens between the members at each chunk's end, inside the program (PBT's exploit and
    # explore: pbt.Exploit); None for runs and sweeps, whose members never meet
    step: Any = None

    @classmethod
    def single(cls, config: PPOConfig) -> Population:
        return cls(config, (Member(config.seed),))

    def to_meta(self) -> list[dict[str, Any]]:
        return [{"seed": m.seed, "values": dict(m.values), "point": m.point} for m in self.members]

    def __len__(self) -> int:
        return len(self.members)

    def inputs(self, members: Sequence[Member]) -> tuple[np.ndarray, HParams]:
        """The seeds and hyperparameters of `members`, stacked on the run axis: host arrays, so making them
        compiles nothing."""
        configs = [self.config.replace(**m.values) if m.values else self.config for m in members]
        hparams = HParams(**{n: np.array([getattr(c, n) for c in configs], np.float32) for n in TRACED})
        return np.array([m.seed for m in members], np.uint32), hparams


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a population's runs go into calls and onto devices."""

    per_call: int  # stacked runs per call (filler runs past the population are dropped by the host)
    num_calls: int
    mesh: Mesh | None  # None: one device, no sharding

    @property
    def stacked_runs(self) -> int:
        return self.per_call * self.num_calls

    @property
    def runs_sharding(self) -> NamedSharding | None:
        return NamedSharding(self.mesh, PartitionSpec("runs")) if self.mesh is not None else None

    def state_shardings(self, abstract: TrainState) -> Any:
        """Per-env fields split along runs and envs, everything else along runs; None on one device."""
        if self.mesh is None:
            return None
        env_split = NamedSharding(self.mesh, PartitionSpec("runs", "envs"))
        shardings = jax.tree.map(lambda _: self.runs_sharding, abstract)
        return shardings.replace(**{
            name: jax.tree.map(lambda _: env_split, getattr(abstract, name)) for name in ENV_AXIS_FIELDS
        })

    @property
    def devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.devices.size


def layout(config: PPOConfig, num_runs: int, max_runs_per_call: int | None = None) -> Layout:
    """Several runs: split over this process's devices along the run axis. One run: its envs split over
    every device of every process (under `jax.distributed`), when num_envs divides evenly."""
    if max_runs_per_call is not None and max_runs_per_call < 1:
        raise ConfigError(f"max_runs_per_call: must be >= 1, got {max_runs_per_call}")
    if num_runs > 1:
        if jax.process_count() > 1:
            raise ConfigError("sweep: runs on the devices of one process; under jax.distributed, start one sweep per "
                              "host with its own seeds (config seed) instead")
        devices = jax.local_devices()
        per_call = num_runs if max_runs_per_call is None else min(max_runs_per_call, num_runs)
        per_call = math.ceil(per_call / len(devices)) * len(devices)  # equal shards on every device
        mesh = Mesh(np.array(devices).reshape(-1, 1), ("runs", "envs")) if len(devices) > 1 else None
        return Layout(per_call, math.ceil(num_runs / per_call), mesh)
    devices = jax.devices()
    if len(devices) > 1 and config.num_envs % len(devices) == 0:
        return Layout(1, 1, Mesh(np.array(devices).reshape(1, -1), ("runs", "envs")))
    if len(devices) > 1 and jax.process_count() > 1:
        raise ConfigError(f"num_envs: {config.num_envs} envs do not split evenly over the {len(devices)} devices "
                          f"of {jax.process_count()} processes; use a multiple of {len(devices)}")
    return Layout(1, 1, None)


def over_runs(fn: Any, num_runs: int, in_axes: tuple = (0,)) -> Any:
    """`fn` mapped over the leading run axis of the arguments `in_axes` marks 0. One run is sliced out and
    back in rather than vmapped, so a single run compiles to the program of one unbatched run."""
    if num_runs > 1:
        return jax.vmap(fn, in_axes=in_axes)

    def single(*args: Any) -> Any:
        args = [jax.tree.map(lambda x: x[0], a) if axis == 0 else a for a, axis in zip(args, in_axes)]
        return jax.tree.map(lambda x: x[None], fn(*args))

    return single


def init_program(trainer: Trainer, num_runs: int) -> Any:
    """`init(seeds, hparams) -> states` over stacked runs."""
    return over_runs(lambda seed, hp: trainer.init(jax.random.key(seed), hp), num_runs, (0, 0))


def chunk_program(trainer: Trainer, num_runs: int = 2, step: Any = None) -> Any:
    """`chunk(states, first_update, num_active) -> (states, metrics, params_finite)` over stacked runs.

    `chunk_size` updates in one scan; updates past `num_active` leave a state untouched and report zeros
    (the host drops them), so one compiled chunk also serves the shorter last one. With `eval_every`,
    the chunk ends with deterministic evaluation episodes when it crossed a multiple of eval_every (or
    finished the run), reported as `eval_return` on its last active update. The update counts are the
    host's, shared by every run, so the evaluation stays a branch under the run axis's vmap rather
    than a select that would evaluate every chunk. `params_finite` (per run) feeds the NaN guard.
    `step(trainer, states, metrics, params_finite, first_update, num_active) -> (states, more metrics)`
    then acts on all the runs at once (see Population.step).
    """
    config = trainer.config

    def one_run(state: TrainState, first_update: jax.Array, num_active: jax.Array) -> tuple[TrainState, Metrics, Any]:
        metrics_shape = jax.eval_shape(trainer.update, state)[1]

        def skip(s: TrainState) -> tuple[TrainState, Metrics]:
            return s, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics_shape)

        def body(s: TrainState, i: jax.Array) -> tuple[TrainState, Metrics]:
            return jax.lax.cond(i < num_active, trainer.update, skip, s)

        state, metrics = jax.lax.scan(body, state, jnp.arange(config.chunk_size))
        if config.eval_every:
            done, every = first_update + num_active, config.eval_every
            due = (done // every > first_update // every) | (done == config.num_updates)
            value = jax.lax.cond(due, lambda s: evaluation_return(trainer, s), lambda s: jnp.float32(jnp.nan), state)
            metrics["eval_return"] = jnp.full(config.chunk_size, jnp.nan).at[num_active - 1].set(value)
        finite = [jnp.isfinite(x).all() for x in jax.tree.leaves(state.params)]
        return state, metrics, jnp.stack(finite).all()

    chunk = over_runs(one_run, num_runs, (0, None, None))
    if step is None:
        return chunk

    def with_step(states: TrainState, first_update: jax.Array,
                  num_active: jax.Array) -> tuple[TrainState, Metrics, Any]:
        states, metrics, finite = chunk(states, first_update, num_active)
        states, more = step(trainer, states, metrics, finite, first_update, num_active)
        return states, {**metrics, **more}, finite

    return with_step


def evaluation_return(trainer: Trainer, state: TrainState) -> jax.Array:
    """Mean return of `eval_episodes` deterministic episodes on separate envs. Its key is derived
    without advancing the training key, so evaluating does not change training."""
    returns, _ = acting.evaluate(trainer.policy, trainer.env, state.params, state.obs_stats,
                                 jax.random.fold_in(state.key, 0x5EED), trainer.config.eval_episodes)
    return returns.mean()


@dataclasses.dataclass
class Program:
    """A population's layout, the shapes of its stacked state, and (once compiled) its init and chunk
    programs, each compiled once."""

    trainer: Trainer
    population: Population
    layout: Layout
    abstract: TrainState  # all stacked runs of every call, unsharded: what a checkpoint holds
    init: Any = None
    chunk: Any = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds of each compile stage

    def compile(self) -> None:
        lay = self.layout
        call_abstract = abstract_states(self.trainer, lay.per_call)
        shardings = lay.state_shardings(call_abstract)
        call_abstract = _placed(call_abstract, shardings)
        out = (shardings, lay.runs_sharding, lay.runs_sharding) if shardings is not None else None
        inputs = self.call_inputs(list(self.population.members[:1]) * lay.per_call)
        clock = time.perf_counter()
        program = chunk_program(self.trainer, lay.per_call, self.population.step)
        lowered = jax.jit(program, out_shardings=out).lower(call_abstract, 0, 0)
        lowered_init = jax.jit(init_program(self.trainer, lay.per_call), out_shardings=shardings).lower(*inputs)
        self.timings["trace_lower"] = time.perf_counter() - clock
        clock = time.perf_counter()
        self.chunk, self.init = lowered.compile(), lowered_init.compile()
        self.timings["xla_compile"] = time.perf_counter() - clock

    def initial_states(self) -> list[TrainState]:
        members = list(self.population.members)
        padded = members + [members[-1]] * (self.layout.stacked_runs - len(members))  # filler runs
        n = self.layout.per_call
        return [self.init(*self.call_inputs(padded[c * n:(c + 1) * n])) for c in range(self.layout.num_calls)]

    def call_inputs(self, members: Sequence[Member]) -> tuple[Any, HParams]:
        inputs = self.population.inputs(members)
        sharding = self.layout.runs_sharding
        # one run's inputs stay uncommitted, so that jit places them on every process's devices
        return jax.device_put(inputs, sharding) if sharding is not None and len(self.population) > 1 else inputs

    def split(self, stacked: TrainState) -> list[TrainState]:
        """A restored whole state, split into the calls' states on their devices."""
        if self.layout.num_calls == 1:
            return [stacked]
        n = self.layout.per_call
        parts = [jax.tree.map(lambda x: x[c * n:(c + 1) * n], stacked) for c in range(self.layout.num_calls)]
        shardings = self.layout.state_shardings(parts[0])
        return [jax.device_put(p, shardings) if shardings is not None else p for p in parts]

    def memory_estimate(self) -> dict[str, int]:
        """Bytes one call plainly needs, by part: its stacked states; its rollout, held three times over (the
        trajectory, the flattened batch, an epoch's shuffled copy), with a recurrent policy's carry stored
        at each step of the trajectory; the evaluation episodes' envs; and the chunk's metrics, on the
        device and on the host (at most METRICS_PER_UPDATE a run and update). A floor, not a forecast."""
        trainer, lay, config = self.trainer, self.layout, self.trainer.config
        per_env = lambda tree: nbytes(tree) // (lay.stacked_runs * config.num_envs)  # noqa: E731
        state = nbytes(self.abstract) * lay.per_call // lay.stacked_runs
        space = trainer.policy.action_space
        action = max(1, math.prod(space.shape)) if space.discrete else space.dim
        mask = space.n // 4 + 1 if space.masked else 0  # one byte per action, in 4-byte words
        obs = 4 * math.prod(trainer.env.observation_shape)
        per_step = 2 * obs + 4 * (action + mask + 10)
        rollout = lay.per_call * config.num_steps * config.num_envs * (3 * per_step + per_env(self.abstract.carry))
        episodes = config.eval_episodes if config.eval_every else 0
        evaluation = lay.per_call * episodes * (per_env(self.abstract.env_state) + 2 * obs)
        metrics = 2 * lay.per_call * config.chunk_size * METRICS_PER_UPDATE * 4
        return {"the training state": state, "the rollout": rollout, "the evaluation envs": evaluation,
                "the chunk's metrics": metrics}

    def restore_target(self) -> TrainState:
        """What to restore a checkpoint onto: sharded as the calls run when there is one call."""
        if self.layout.num_calls > 1:
            return self.abstract
        return _placed(self.abstract, self.layout.state_shardings(self.abstract))


def _placed(abstract: TrainState, shardings: Any) -> TrainState:
    """`abstract` with `shardings` attached (as it is, when there are none)."""
    if shardings is None:
        return abstract
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def check_fits(program: Program) -> None:
    """Refuse, before compiling, a program that plainly cannot fit the devices' memory, naming the key to
    change for its largest part and what bounds the memory."""
    parts, have = program.memory_estimate(), limits.device_headroom()
    need = sum(parts.values())
    if have is None or need <= have.bytes:
        return
    config, population = program.trainer.config, program.population
    pbt = population.step is not None
    fewer = "" if len(population) == 1 else " or a smaller --population," if pbt else " or --max-runs-per-call,"
    largest = max(parts, key=parts.get)
    key, advice = {
        "the training state": ("memory_size" if config.memory != "none" else "hidden_sizes",
                               f"use a smaller network{fewer} or a larger device"),
        "the rollout": ("num_envs", f"use fewer envs or steps{fewer} or a larger device"),
        "the evaluation envs": ("eval_episodes", "use fewer evaluation episodes"),
        "the chunk's metrics": ("interval" if pbt else "log_every",
                                f"use fewer updates per chunk ({'--interval' if pbt else 'log_every'})"),
    }[largest]
    what = f"{program.layout.per_call} run(s)" + (
        f" of {config.num_envs} envs x {config.num_steps} steps" if largest == "the rollout" else "")
    shown = ", ".join(f"{name} {gib(n)}" for name, n in parts.items() if n >= need // 100)
    raise ConfigError(f"{key}: {what} need at least {gib(need)} ({shown}), more than the {gib(have.bytes)} "
                      f"available (bound by {have.source}); {advice}")


def plan(trainer: Trainer, population: Population, max_runs_per_call: int | None = None) -> Program:
    """The population's layout and state shapes, before anything compiles."""
    lay = layout(trainer.config, len(population), max_runs_per_call)
    return Program(trainer, population, lay, abstract_states(trainer, lay.stacked_runs))
