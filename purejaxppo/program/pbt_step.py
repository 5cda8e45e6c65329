"""Population-based training's step inside the compiled program, and the setup it runs by.

At the end of each full chunk of `interval` updates, `Exploit` ranks each population's members by their
score over the interval, copies a top member's learner state (params, optimizer state, normaliser
statistics, KL coefficient, hyperparameters) into each bottom member, which keeps its own envs, PRNG
key and episode counters, and perturbs or resamples the copied hyperparameters (the math is in
`exploit.py`). Its PRNG key is the population's seed folded with the update count, so a run is
deterministic given its seed, and a resume is bit-identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from purejaxppo.program import exploit
from purejaxppo.program.evaluation import evaluation_return
from purejaxppo.program.ppo import PPO, TrainState

SCORES = ("episode_return", "eval_return")
# the learner's state, which a replaced member copies from its parent (the rest belongs to its envs)
COPIED = ("params", "opt_state", "obs_stats", "return_stats", "kl_beta", "hparams", "ref")
DIVERGED_IF_NOT_FINITE = ("policy_loss", "value_loss", "grad_norm")
KEY_SALT = 0x9B7  # folded into the population's seed, so the PBT key differs from the members' keys


@dataclasses.dataclass(frozen=True)
class Explored:
    """A hyperparameter that PBT explores, within [low, high] (sampled in log space when low > 0)."""

    name: str
    low: float
    high: float

    @property
    def log_scale(self) -> bool:
        return self.low > 0


@dataclasses.dataclass(frozen=True)
class PBTConfig:
    population: int
    explore: tuple[Explored, ...]
    interval: int = 10
    quantile: float = 0.25
    perturb: tuple[float, ...] = (0.8, 1.25)
    resample: float = 0.25
    score: str = "episode_return"
    seeds: int = 1  # independent populations in one call

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "explore": [dataclasses.asdict(e) for e in self.explore]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PBTConfig:
        return cls(**{**data, "explore": tuple(Explored(**e) for e in data["explore"]),
                      "perturb": tuple(data["perturb"])})



@dataclasses.dataclass(frozen=True)
class Exploit:
    """The in-program PBT step at a chunk's end (`chunk.chunk_program` calls it over the stacked states):
    `(ppo, states, metrics, params_finite, first_update, num_active) -> (states, extra metrics)`, where
    `params_finite` is the chunk's own per-run check of the params."""

    spec: PBTConfig
    seeds: tuple[int, ...]  # each population's first member's seed

    def __call__(self, ppo: PPO, states: TrainState, metrics: dict[str, jax.Array], params_finite: jax.Array,
                 first_update: jax.Array, num_active: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        spec = self.spec
        g, n = spec.seeds, spec.population
        real = g * n  # the stacked runs past these are filler runs, left alone
        names = [e.name for e in spec.explore]
        update = first_update + num_active
        due = (num_active == ppo.config.chunk_size) & (update % spec.interval == 0)

        def step(states: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
            mine = jax.tree.map(lambda x: x[:real], states)
            if spec.score == "eval_return":
                scores = jax.vmap(lambda s: evaluation_return(ppo, s))(mine)
            else:
                scores = exploit.interval_scores(metrics["episode_return"][:real])
            bad = [~jnp.isfinite(metrics[m][:real]).all(axis=-1) for m in DIVERGED_IF_NOT_FINITE if m in metrics]
            finite = params_finite[:real]
            diverged = ~finite | jnp.stack(bad).any(axis=0) if bad else ~finite
            keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.fold_in(jax.random.key(s), KEY_SALT), update))(
                jnp.asarray(self.seeds, jnp.uint32))
            k_exploit, k_explore = jax.vmap(jax.random.split, out_axes=1)(keys)
            local = jax.vmap(lambda s, d, k: exploit.exploit(s, d, k, spec.quantile))(
                scores.reshape(g, n), diverged.reshape(g, n), k_exploit)
            parents = (local + n * jnp.arange(g)[:, None]).reshape(real)
            replaced = parents != jnp.arange(real)
            copied = mine.replace(**{f: jax.tree.map(lambda x: x[parents], getattr(mine, f)) for f in COPIED})
            values = jnp.stack([getattr(copied.hparams, name) for name in names], axis=-1)
            low, high = (jnp.array([getattr(e, b) for e in spec.explore], jnp.float32) for b in ("low", "high"))
            log_scale = jnp.array([e.log_scale for e in spec.explore])
            factors = jnp.array(spec.perturb, jnp.float32)
            new = jax.vmap(lambda v, r, k: exploit.explore(v, r, k, factors, spec.resample, low, high, log_scale))(
                values.reshape(g, n, -1), replaced.reshape(g, n), k_explore).reshape(real, -1)
            copied = copied.replace(hparams=copied.hparams.replace(**{m: new[:, j] for j, m in enumerate(names)}))
            states = jax.tree.map(lambda whole, part: whole.at[:real].set(part), states, copied)
            extra = {"pbt_parent": parents.astype(jnp.float32), "pbt_score": scores,
                     **{f"pbt_{m}": new[:, j] for j, m in enumerate(names)}}
            return states, extra

        def skip(states: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
            keys = ["pbt_parent", "pbt_score", *(f"pbt_{m}" for m in names)]
            return states, {k: jnp.full(real, jnp.nan) for k in keys}

        states, extra = jax.lax.cond(due, step, skip, states)
        runs, size = metrics["episode_return"].shape
        return states, {k: jnp.full((runs, size), jnp.nan).at[:real, num_active - 1].set(v) for k, v in extra.items()}
