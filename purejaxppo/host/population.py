"""A population: the runs that one compiled program trains side by side. A single run is a population of
one. Each member has a seed and the traced hyperparameter values it changes from the config; a sweep's
members also name their grid point, a PBT run's their population."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from purejaxppo.config import TRACED, PPOConfig
from purejaxppo.program.hparams import HParams


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
    # explore: pbt_step.Exploit); None for runs and sweeps, whose members never meet
    step: Any = None
    # what the host does between two chunks, for the population as a whole (a search's judging and
    # refilling: search.Search); None for the rest
    between: Any = None

    @classmethod
    def single(cls, config: PPOConfig) -> Population:
        return cls(config, (Member(config.seed),))

    @property
    def num_updates(self) -> int:
        """The updates the host loop runs at most: the config's, or a search's horizon."""
        return self.config.num_updates if self.between is None else self.between.horizon

    def __len__(self) -> int:
        return len(self.members)

    def inputs(self, members: Sequence[Member]) -> tuple[np.ndarray, HParams]:
        """The seeds and hyperparameters of `members`, stacked on the run axis: host arrays, so making them
        compiles nothing."""
        configs = [self.config.replace(**m.values) if m.values else self.config for m in members]
        hparams = HParams(**{n: np.array([getattr(c, n) for c in configs], np.float32) for n in TRACED})
        return np.array([m.seed for m in members], np.uint32), hparams
