"""Where a search's trials get their values: drawn at random from the spaces, or asked of an Optuna study
(TPE, GP) that is told each trial's scores, through ask and tell at chunk ends.

A sampler answers `ask(trial) -> values` and hears `report(trial, budget, score)` at each rung and
`tell(trial, status, score)` when a trial ends. Each answer is a function of the trial's index and what
the sampler was told before, never of how many times it was asked in this process: so a search resumed
from a checkpoint gets the values a straight one would. The Optuna study lives in a journal file in the
run dir; a resume first takes the trials that the earlier process asked after its last checkpoint,
rather than asking again, and re-sends nothing the study has already.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from purejaxppo.errors import ConfigError

SAMPLERS = ("random", "tpe", "gp")
SALT = 0x7E57  # keeps a trial's draws apart from the numbers its seed gives the program
JOURNAL = "optuna.journal"  # the study's file in the run dir
STUDY = "purejaxppo"


def sample(spaces: Sequence[Any], seed: int, trial: int) -> dict[str, float]:
    """Trial `trial`'s values: one uniform draw per space from a generator keyed by (seed, trial)."""
    draws = np.random.default_rng([SALT, seed, trial]).random(len(spaces))
    return {s.name: s.draw(float(u)) for s, u in zip(spaces, draws)}


class RandomSampler:
    """Independent uniform draws (log-uniform for log spaces) per trial; it learns nothing from scores."""

    name = "random"
    opens = False  # whether it must be opened (a study read or created) before the first ask

    def __init__(self, spaces: Sequence[Any], seed: int) -> None:
        self.spaces, self.seed = tuple(spaces), seed

    def open(self, run_dir: Path | None) -> None:
        pass

    def ask(self, trial: int) -> dict[str, float]:
        return sample(self.spaces, self.seed, trial)

    def report(self, trial: int, budget: int, score: float) -> None:
        pass

    def tell(self, trial: int, status: str, score: float) -> None:
        pass


class OptunaSampler:
    """An Optuna study whose sampler (TPE or GP) proposes each trial's values from the scores it was told.
    Trial t of the search is the study's trial t; a stopped trial is told as pruned (its reports stay),
    a diverged one as failed."""

    opens = True

    def __init__(self, spaces: Sequence[Any], seed: int, name: str) -> None:
        self.spaces, self.seed, self.name = tuple(spaces), seed, name
        self.study: Any = None
        self._storage: Any = None
        self._study_id = 0
        try:
            import optuna
        except ImportError:
            raise ConfigError(f"--sampler {name}: needs Optuna; pip install 'purejaxppo[tune]'") from None
        if name == "gp":
            try:
                import scipy  # noqa: F401
                import torch  # noqa: F401
            except ImportError:
                raise ConfigError("--sampler gp: Optuna's GP sampler needs PyTorch and SciPy (pip install torch "
                                  "scipy); --sampler tpe needs neither") from None
        self._optuna = optuna

    def open(self, run_dir: Path | None) -> None:
        """Load the study from the run dir's journal, or start it there (in memory without a run dir)."""
        optuna = self._optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if run_dir is not None:
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            self._storage = JournalStorage(JournalFileBackend(str(run_dir / JOURNAL)))
        else:
            self._storage = optuna.storages.InMemoryStorage()
        self.study = optuna.create_study(study_name=STUDY, storage=self._storage, direction="maximize",
                                         load_if_exists=True)
        self._study_id = self._storage.get_study_id_from_name(STUDY)

    def _sampler(self, trial: int) -> Any:
        # a sampler seeded afresh for every trial, so what it proposes for a trial never depends on how
        # many asks this process made before (a resumed search makes fewer)
        seed = int(np.random.default_rng([SALT, self.seed, trial]).integers(2**31))
        if self.name == "gp":
            return self._optuna.samplers.GPSampler(seed=seed)
        return self._optuna.samplers.TPESampler(seed=seed)

    def distributions(self) -> dict[str, Any]:
        d = self._optuna.distributions
        return {s.name: d.CategoricalDistribution(list(s.values)) if s.kind == "choice"
                else d.FloatDistribution(s.low, s.high, log=s.kind == "log") for s in self.spaces}

    def ask(self, trial: int) -> dict[str, float]:
        """The study's trial `trial`: asked now, or already asked by a process that stopped before its
        next checkpoint (then its values as they were)."""
        trials = self.study.get_trials(deepcopy=False)
        if trial < len(trials):
            return {k: float(v) for k, v in trials[trial].params.items()}
        if trial != len(trials):
            raise ConfigError(f"{JOURNAL}: the study holds {len(trials)} trials, but the search asks for trial "
                              f"{trial}; the journal is not this search's")
        self.study.sampler = self._sampler(trial)
        asked = self.study.ask(self.distributions())
        return {k: float(v) for k, v in asked.params.items()}

    def report(self, trial: int, budget: int, score: float) -> None:
        frozen = self.study.get_trials(deepcopy=False)[trial]
        if math.isfinite(score) and budget not in frozen.intermediate_values and frozen.state.name == "RUNNING":
            trial_id = self._storage.get_trial_id_from_study_id_trial_number(self._study_id, trial)
            self._storage.set_trial_intermediate_value(trial_id, budget, score)

    def tell(self, trial: int, status: str, score: float) -> None:
        state = self._optuna.trial.TrialState
        if self.study.get_trials(deepcopy=False)[trial].state != state.RUNNING:
            return  # told already, by a process that stopped before its next checkpoint
        if status == "finished" and math.isfinite(score):
            self.study.tell(trial, score)
        elif status == "stopped":
            self.study.tell(trial, state=state.PRUNED)
        else:  # diverged, or finished without a known score
            self.study.tell(trial, state=state.FAIL)


def make_sampler(name: str, spaces: Sequence[Any], seed: int) -> RandomSampler | OptunaSampler:
    """The sampler `name` (one of SAMPLERS) over `spaces`; refused in one line where its library is missing."""
    if name == "random":
        return RandomSampler(spaces, seed)
    return OptunaSampler(spaces, seed, name)
