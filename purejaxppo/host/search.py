"""A hyperparameter search's state on the host: its spaces, its trials and which slot trains which, and
what it does between two chunks of the compiled program.

A search trains `slots` trials side by side as one population (plus one keeper run, below). At each
chunk's end it judges the trials whose budget reached a rung (`asha`), stops the diverged ones, and
fills every freed slot with the next trial: fresh params, optimizer state, statistics, envs and key from
the compiled init, with the new trial's hyperparameters, so a refilled slot trains as a fresh run of
that trial would. Trial t has seed `config.seed + t` and values drawn from the spaces by the random
sampler with a key of (the config's seed, t), so a resumed search draws what a straight one would.

The population's last run is the keeper: it holds the best finished trial's final state, put back after
every chunk (the program trains it like the others, and the host discards that), so the checkpoint
always holds the policy `load_policy` gives.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo.host import asha
from purejaxppo.host.population import Member
from purejaxppo.host.processes import decided, is_primary
from purejaxppo.host.samplers import make_sampler
from purejaxppo.program import exploit
from purejaxppo.program.pbt_step import DIVERGED_IF_NOT_FINITE

SCHEDULERS = ("asha", "none")
SCORES = ("episode_return", "eval_return")


@dataclasses.dataclass(frozen=True)
class Space:
    """Where one traced hyperparameter is drawn from: `uniform` in [low, high], `log` (uniform in log
    space), or a `choice` of values."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    values: tuple[float, ...] = ()

    def draw(self, u: float) -> float:
        """The value at `u`, a uniform draw from [0, 1)."""
        if self.kind == "choice":
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        if self.kind == "log":
            return float(math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))))
        return float(self.low + u * (self.high - self.low))

    def __str__(self) -> str:
        if self.kind == "choice":
            return f"{self.name}={','.join(f'{v:g}' for v in self.values)}"
        return f"{self.name}={'log:' if self.kind == 'log' else ''}{self.low:g}:{self.high:g}"


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """A search's setup. `interval` (updates per chunk) and `min_updates` (the first rung) are resolved
    by `tune.check` before a search is prepared; 0 there means "choose"."""

    spaces: tuple[Space, ...]
    trials: int
    slots: int
    eta: int = 3
    min_updates: int = 0
    interval: int = 0
    scheduler: str = "asha"
    sampler: str = "random"
    score: str = "episode_return"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "spaces": [dataclasses.asdict(s) for s in self.spaces]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TuneConfig:
        spaces = tuple(Space(**{**s, "values": tuple(s["values"])}) for s in data["spaces"])
        return cls(**{**data, "spaces": spaces})


@dataclasses.dataclass
class Trial:
    id: int
    slot: int
    seed: int
    values: dict[str, float]
    start: int  # the search's update at which it started
    updates: int = 0  # its own, so far
    status: str = "running"  # running, promoted, stopped, diverged, finished
    scores: list[float] = dataclasses.field(default_factory=list)  # at each rung it reached, then at its end
    recent: list[float] = dataclasses.field(default_factory=list)  # its returns over the score's window

    @property
    def ended(self) -> bool:
        return self.status in ("stopped", "diverged", "finished")


class Search:
    """The search's state, and its step between chunks (`host.loop` calls it; see the module's doc)."""

    def __init__(self, spec: TuneConfig, seed: int, max_updates: int, trials: list[Trial] | None = None,
                 kept: int | None = None, run_dir: Path | None = None) -> None:
        self.spec, self.seed, self.max_updates, self.run_dir = spec, seed, max_updates, run_dir
        self.rungs = asha.rungs(spec.min_updates, max_updates, spec.eta) if spec.scheduler == "asha" else ()
        self.sampler = make_sampler(spec.sampler, spec.spaces, seed)
        if trials is None:  # a study's first trials are asked once it is open, at the start
            trials = [] if self.sampler.opens else [self.new_trial(s, s, 0) for s in range(spec.slots)]
        self.trials = trials
        self.kept = kept  # the trial the keeper holds
        self._kept_state: Any = None

    def describe(self) -> str:
        spec = self.spec
        rule = (f"ASHA, eta {spec.eta}, rungs at {', '.join(map(str, self.rungs))} updates" if self.rungs
                else "every trial to its end")
        started = f"; {len(self.trials)} started, {sum(t.ended for t in self.trials)} ended" if any(
            t.updates for t in self.trials) else ""
        sampler = "random draws" if spec.sampler == "random" else f"Optuna's {spec.sampler.upper()} sampler"
        return (f"{spec.trials} trials in {spec.slots} slots and a keeper run, {rule}; {sampler} over "
                f"{' '.join(map(str, spec.spaces))}; score {spec.score}{started}")

    def new_trial(self, trial: int, slot: int, start: int) -> Trial:
        return Trial(trial, slot, self.seed + trial, self.sampler.ask(trial), start)

    @property
    def keeper(self) -> int:
        """The keeper's run index: after the slots."""
        return self.spec.slots

    def members(self) -> tuple[Member, ...]:
        """The population at the start: the first trial of each slot (the config's values for a study's,
        until they are asked at the start), then the keeper (a copy of slot 0 until a trial finishes)."""
        firsts = [Member(t.seed, dict(t.values), point=t.id) for t in self.trials[: self.spec.slots]] or [
            Member(self.seed + s, point=s) for s in range(self.spec.slots)]
        return (*firsts, dataclasses.replace(firsts[0], point=-1))

    @property
    def horizon(self) -> int:
        """The updates a search can take at most: every slot is busy until the last trial starts, after
        at most (trials - 1) budgets shared out over the slots, and that trial runs one budget more."""
        spec = self.spec
        before_last = -(-(spec.trials - 1) * self.max_updates // (spec.slots * spec.interval))  # in chunks, rounded up
        return (before_last + self.max_updates // spec.interval) * spec.interval

    def running(self) -> dict[int, Trial]:
        """The trial each busy slot trains."""
        return {t.slot: t for t in self.trials if not t.ended}

    @property
    def done(self) -> bool:
        return len(self.trials) == self.spec.trials and not self.running()

    def best(self) -> Trial | None:
        """The finished trial with the best final score (the earliest among equals; an unknown score ranks
        last), None before any has finished."""
        finished = [t for t in self.trials if t.status == "finished"]
        if not finished:
            return None
        return min(finished, key=lambda t: (math.isnan(t.scores[-1]), -np.nan_to_num(t.scores[-1]), t.id))

    def judge(self, update: int, active: int, metrics: Mapping[str, np.ndarray],
              params_finite: np.ndarray) -> tuple[int | None, dict[int, Trial]]:
        """Account a chunk of `active` updates that ended at the search's `update`: every running trial's
        budget grows; a diverged one stops; one at a rung is judged; one at the full budget finishes.
        Returns the slot whose finished trial is now the best (None if none) and the new trials of the
        freed slots, by slot."""
        diverged = ~np.asarray(params_finite, bool)
        for name in DIVERGED_IF_NOT_FINITE:
            if name in metrics:
                diverged |= ~np.isfinite(metrics[name]).all(axis=1)
        arriving: dict[int, list[Trial]] = {}
        before = self.best()
        for slot, trial in sorted(self.running().items()):
            trial.updates += active
            trial.recent = [*trial.recent, *map(float, metrics["episode_return"][slot])][-self.spec.min_updates:]
            if diverged[slot]:
                self._end(trial, "diverged", math.nan)
            elif trial.updates >= self.max_updates:
                trial.scores.append(self._score(trial, metrics))
                self._end(trial, "finished", trial.scores[-1])
            elif trial.updates in self.rungs:
                trial.scores.append(self._score(trial, metrics))
                self.sampler.report(trial.id, trial.updates, trial.scores[-1])
                arriving.setdefault(self.rungs.index(trial.updates), []).append(trial)
        for rung, trials in arriving.items():
            arrived = {t.id for t in trials}
            earlier = [t.scores[rung] for t in self.trials if t.id not in arrived and len(t.scores) > rung]
            go_on = asha.promoted(np.array(earlier), np.array([t.scores[rung] for t in trials]), self.spec.eta)
            for trial, promoted in zip(trials, go_on):
                if promoted:
                    trial.status = "promoted"
                else:
                    self._end(trial, "stopped", trial.scores[-1])
        best = self.best()
        keep = best.slot if best is not None and best is not before else None
        if keep is not None:
            self.kept = best.id
        busy = self.running()
        refills = {}
        for slot in range(self.spec.slots):
            if slot not in busy and len(self.trials) < self.spec.trials:
                refills[slot] = self.new_trial(len(self.trials), slot, update)
                self.trials.append(refills[slot])
        return keep, refills

    def _end(self, trial: Trial, status: str, score: float) -> None:
        """A trial's end, told to the sampler; its score window is of no more use (the checkpoints' record
        stays small)."""
        trial.status, trial.recent = status, []
        self.sampler.tell(trial.id, status, score)

    def _score(self, trial: Trial, metrics: Mapping[str, np.ndarray]) -> float:
        """A trial's score now: the mean of its finite per-update returns over its last `min_updates` updates
        (the first rung's budget, so every rung ranks by a window of one length), or the return of the
        evaluation at the end of this chunk; NaN where none is known."""
        if self.spec.score == "eval_return":
            return float(metrics["eval_return"][trial.slot, -1])
        return float(exploit.interval_scores(np.array([trial.recent], np.float32))[0])

    # The loop's side: its hooks, called with the program's stacked states (one call: a search never splits).

    def start(self, program: Any, states: list[Any]) -> list[Any]:
        """Before the first chunk of this call: open the sampler; for a new study, ask its first trials and
        start them in every slot; hold the keeper's state, to put it back after each chunk. Under
        `jax.distributed` process 0 alone asks and judges (its study is in the run dir); the others follow."""
        fresh = not self.trials

        def first() -> dict[str, Any]:
            self.sampler.open(self.run_dir)
            if fresh:
                self.trials = [self.new_trial(s, s, 0) for s in range(self.spec.slots)]
            return self.to_json()

        self._follow(decided(first))
        if fresh:
            states = self._refill(program, states, {t.slot: t for t in self.trials})
        self._kept_state = jax.tree.map(lambda x: x[self.keeper], states[0])
        return states

    def __call__(self, program: Any, states: list[Any], update: int, active: int, metrics: dict[str, np.ndarray],
                 params_finite: np.ndarray) -> tuple[list[Any], dict[str, np.ndarray]]:
        """After a chunk that ended at `update`: judge, keep, refill; returns the states to train on and the
        chunk's metrics with each run's trial (NaN where a slot was idle, and for the keeper the trial it
        holds; its other metrics are NaN, since its training is discarded)."""
        slots, keeper = self.spec.slots, self.keeper
        trained = self.running()
        trial = np.array([trained[s].id if s in trained else np.nan for s in range(slots)], np.float64)

        def judged() -> dict[str, Any]:
            keep, refills = self.judge(update, active, {k: v[:slots] for k, v in metrics.items()}, params_finite[:slots])
            return {**self.to_json(), "keep": keep, "refills": sorted(refills)}

        decision = self._follow(decided(judged))
        keep = decision["keep"]
        refills = {s: next(t for t in reversed(self.trials) if t.slot == s) for s in decision["refills"]}
        idle = np.isnan(trial)
        metrics = {k: _blanked(v, idle) for k, v in metrics.items()}
        metrics["trial"] = np.broadcast_to(
            np.append(trial, np.nan if self.kept is None else self.kept)[:, None], (slots + 1, active)).copy()
        if keep is not None:
            self._kept_state = jax.tree.map(lambda x: x[keep], states[0])
        states = [_put(states[0], keeper, self._kept_state)]
        return self._refill(program, states, refills), metrics

    def _refill(self, program: Any, states: list[Any], refills: dict[int, Trial]) -> list[Any]:
        """`states` with the slots of `refills` started afresh by the compiled init, as their new trials."""
        if not refills:
            return states
        chosen = [refills.get(s) for s in range(program.layout.per_call)]
        fresh = program.init(*program.call_inputs(
            [Member(t.seed, dict(t.values)) if t is not None else Member(self.seed) for t in chosen]))
        whole = _select(np.array([t is not None for t in chosen]), fresh, states[0])
        shardings = program.layout.state_shardings(whole)
        return [jax.device_put(whole, shardings) if shardings is not None else whole]

    def _follow(self, data: dict[str, Any]) -> dict[str, Any]:
        """Take process 0's trials (`to_json`'s) as this process's own; returns `data`."""
        if not is_primary():
            followed = Search.from_json(self.spec, self.seed, self.max_updates, data)
            self.trials, self.kept = followed.trials, followed.kept
        return data

    def recorded(self, record: Any) -> Any:
        """`record` with the search's state, for a checkpoint."""
        return dataclasses.replace(record, search=self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {"kept": self.kept, "trials": [dataclasses.asdict(t) for t in self.trials]}

    @classmethod
    def from_json(cls, spec: TuneConfig, seed: int, max_updates: int, data: Mapping[str, Any],
                  run_dir: Path | None = None) -> Search:
        trials = [Trial(**{**t, "values": dict(t["values"]), "scores": list(t["scores"])}) for t in data["trials"]]
        return cls(spec, seed, max_updates, trials, data["kept"], run_dir)


def _blanked(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A float metric with NaN on the `rows` flagged (idle slots) and on the keeper's row (the last)."""
    if not np.issubdtype(values.dtype, np.floating):
        return values
    out = values.copy()
    out[: rows.size][rows] = np.nan
    out[rows.size:] = np.nan
    return out


@jax.jit
def _put(states: Any, index: int, one: Any) -> Any:
    return jax.tree.map(lambda x, y: x.at[index].set(y), states, one)


@jax.jit
def _select(take: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jax.lax.select(jnp.broadcast_to(take.reshape(-1, *[1] * (a.ndim - 1)), a.shape),
                                                    a, b), new, old)
