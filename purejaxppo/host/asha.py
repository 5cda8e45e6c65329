"""Asynchronous successive halving (ASHA; Li et al. 2020, "A System for Massively Parallel Hyperparameter
Tuning") as pure functions of arrays, in the stopping form that fills a freed slot at once.

A trial is judged each time its own budget reaches a rung. It goes on only when its score is among the
top 1/eta of every score recorded at that rung so far, its own and those of the trials arriving with it
included; otherwise it stops. Early arrivals are judged against fewer scores (the asynchronous part),
which is what lets a slot be refilled without waiting for a whole bracket.
"""

from __future__ import annotations

import numpy as np


def rungs(min_updates: int, max_updates: int, eta: int) -> tuple[int, ...]:
    """The budgets, in a trial's own updates, at which it is judged: `min_updates * eta**k` below
    `max_updates` (a trial that reaches `max_updates` has finished, and is not judged)."""
    if min_updates < 1 or eta < 2:
        raise ValueError(f"rungs need min_updates >= 1 and eta >= 2, got {min_updates} and {eta}")
    out, budget = [], min_updates
    while budget < max_updates:
        out.append(budget)
        budget *= eta
    return tuple(out)


def kept(count: int, eta: int) -> int:
    """How many of `count` scores recorded at a rung are in its top 1/eta: at least one."""
    return max(1, count // eta)


def promoted(earlier: np.ndarray, arriving: np.ndarray, eta: int) -> np.ndarray:
    """Which of the `arriving` scores go on past a rung where the `earlier` scores were recorded before them.

    All scores are ranked together, the higher the better: an unknown score (NaN: no episode ended) below
    every known one, and equal scores in the order they were recorded (`earlier` first, then `arriving` in
    the order given). An arriving score goes on when its rank is below `kept(total, eta)`. Shape
    `arriving.shape`, bool.
    """
    scores = np.concatenate([np.asarray(earlier, np.float64), np.asarray(arriving, np.float64)])
    unknown = np.isnan(scores)
    order = np.lexsort((np.arange(scores.size), -np.where(unknown, 0.0, scores), unknown))
    rank = np.empty(scores.size, np.int64)
    rank[order] = np.arange(scores.size)
    return rank[len(earlier):] < kept(scores.size, eta)
