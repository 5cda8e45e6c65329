"""How a population's runs are laid out, and its compiled programs.

The members' training states are stacked on a leading run axis and advance together, `chunk_size`
updates per call of one compiled chunk program. The program is laid out on a device mesh with a "runs"
and an "envs" axis: several runs are split over the devices along the run axis (padded to a multiple of
the device count, in calls of equal size when they do not fit in one), and a single run's envs are split
along the env axis; either way over the devices of every process under `jax.distributed`. Before
anything compiles, `check_fits` refuses a program that plainly cannot fit the memory it may take.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from purejaxppo.config import PPOConfig
from purejaxppo.errors import ConfigError
from purejaxppo.host import limits
from purejaxppo.host.limits import Headroom, gib, nbytes
from purejaxppo.host.population import Member, Population
from purejaxppo.program import chunk as chunk_lib
from purejaxppo.program.hparams import HParams
from purejaxppo.program.ppo import ENV_AXIS_FIELDS, PPO, TrainState, abstract_states

METRICS_PER_UPDATE = 48  # a bound on the metrics one run reports per update (about 20 without variants)


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
    """Several runs: split along the run axis over every device of every process (under `jax.distributed`,
    process 0 holds the first runs). One run: its envs split over them, when num_envs divides evenly."""
    if max_runs_per_call is not None and max_runs_per_call < 1:
        raise ConfigError(f"max_runs_per_call: must be >= 1, got {max_runs_per_call}")
    if num_runs > 1:
        devices = jax.devices()  # under jax.distributed, every process's: each holds a slice of the runs
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


@dataclasses.dataclass
class Program:
    """A population's layout, the shapes of its stacked state, and (once compiled) its init and chunk
    programs, each compiled once."""

    ppo: PPO
    population: Population
    layout: Layout
    abstract: TrainState  # all stacked runs of every call, unsharded: what a checkpoint holds
    init: Any = None
    chunk: Any = None
    metric_shapes: dict[str, Any] = dataclasses.field(default_factory=dict)  # what a chunk reports, once traced
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds of each compile stage

    def compile(self) -> None:
        lay = self.layout
        call_abstract = abstract_states(self.ppo, lay.per_call)
        shardings = lay.state_shardings(call_abstract)
        call_abstract = _placed(call_abstract, shardings)
        out = chunk_lib.ChunkOut(shardings, lay.runs_sharding, lay.runs_sharding) if shardings is not None else None
        inputs = self.call_inputs(list(self.population.members[:1]) * lay.per_call)
        clock = time.perf_counter()
        program = chunk_lib.chunk_program(self.ppo, lay.per_call, self.population.step)
        lowered = jax.jit(program, out_shardings=out).lower(call_abstract, 0, 0)
        self.metric_shapes = lowered.out_info.metrics
        lowered_init = jax.jit(chunk_lib.init_program(self.ppo, lay.per_call), out_shardings=shardings).lower(*inputs)
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
        ppo, lay, config = self.ppo, self.layout, self.ppo.config
        per_env = lambda tree: nbytes(tree) // (lay.stacked_runs * config.num_envs)  # noqa: E731
        state = nbytes(self.abstract) * lay.per_call // lay.stacked_runs
        space = ppo.policy.action_space
        action = max(1, math.prod(space.shape)) if space.discrete else space.dim
        mask = space.n // 4 + 1 if space.masked else 0  # one byte per action, in 4-byte words
        obs = 4 * math.prod(ppo.env.observation_shape)
        per_step = 2 * obs + 4 * (action + mask + 10)
        rollout = lay.per_call * config.num_steps * config.num_envs * (3 * per_step + per_env(self.abstract.carry))
        episodes = config.eval_episodes if config.eval_every else 0
        evaluation = lay.per_call * episodes * (per_env(self.abstract.env_state) + 2 * obs)
        metrics = 2 * lay.per_call * config.chunk_size * METRICS_PER_UPDATE * 4
        return {"the training state": state, "the rollout": rollout, "the evaluation envs": evaluation,
                "the chunk's metrics": metrics}

    def restore_target(self, stacked_runs: int | None = None) -> TrainState:
        """What to restore a checkpoint of `stacked_runs` (by default this layout's) onto: sharded as the calls
        run when there is one call; one written with another number of stacked runs (on another number of
        devices or processes) whole on every device, for `resumed` to share out again."""
        mesh = self.layout.mesh
        if stacked_runs is not None and stacked_runs != self.layout.stacked_runs:
            saved = abstract_states(self.ppo, stacked_runs)
            return saved if mesh is None else _placed(saved, jax.tree.map(
                lambda _: NamedSharding(mesh, PartitionSpec()), saved))
        if self.layout.num_calls > 1:
            return self.abstract
        return _placed(self.abstract, self.layout.state_shardings(self.abstract))

    def resumed(self, restored: TrainState, stacked_runs: int) -> list[TrainState]:
        """A restored whole state of `stacked_runs` as this layout's calls. Written with another number of
        stacked runs, the population's runs are taken as they were and the filler runs, again, are copies
        of the last: each run goes on from its own state, in a batch of another size."""
        lay = self.layout
        if stacked_runs == lay.stacked_runs:
            return self.split(restored)
        take = np.minimum(np.arange(lay.stacked_runs), len(self.population) - 1)
        shardings = lay.state_shardings(self.abstract) if lay.num_calls == 1 else None
        return self.split(jax.jit(lambda s: jax.tree.map(lambda x: x[take], s), out_shardings=shardings)(restored))


def _placed(abstract: TrainState, shardings: Any) -> TrainState:
    """`abstract` with `shardings` attached (as it is, when there are none)."""
    if shardings is None:
        return abstract
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def fewer_runs(population: Population, resumed: bool) -> str:
    """How a population can hold fewer runs in memory at once, as advice (a resume keeps its own)."""
    if len(population) == 1 or resumed:
        return ""
    if population.between is not None:
        return " or fewer --slots,"
    return " or a smaller --population," if population.step is not None else " or --max-runs-per-call,"


def check_fits(program: Program, resumed: bool = False) -> tuple[dict[str, int], Headroom | None]:
    """Refuse, before compiling, a program that plainly cannot fit the devices' memory, naming the key to
    change for its largest part and what bounds the memory. Returns the estimate by part and the
    headroom."""
    parts, have = program.memory_estimate(), limits.device_headroom()
    need = sum(parts.values())
    if have is None or need <= have.bytes:
        return parts, have
    config, population = program.ppo.config, program.population
    pbt = population.step is not None
    fewer = fewer_runs(population, resumed)
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


def plan(ppo: PPO, population: Population, max_runs_per_call: int | None = None) -> Program:
    """The population's layout and state shapes, before anything compiles."""
    lay = layout(ppo.config, len(population), max_runs_per_call)
    return Program(ppo, population, lay, abstract_states(ppo, lay.stacked_runs))
