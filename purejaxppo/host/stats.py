"""Aggregate statistics over seeds: mean, median and interquartile mean, with percentile confidence
intervals from a stratified bootstrap (Agarwal et al. 2021, "Deep RL at the edge of the statistical
precipice"). Pure numpy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]


def iqm(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% of the sorted scores along `axis`.

    With n scores, the lowest and highest n/4 are dropped, fractional scores at each edge weighted
    in proportion (the same as the 25%-trimmed mean on the sample's empirical distribution).
    """
    scores = np.sort(np.asarray(scores, np.float64), axis=axis)
    n = scores.shape[axis]
    cut = n / 4.0
    positions = np.arange(n)
    weights = np.clip(np.minimum(positions + 1 - cut, n - cut - positions), 0.0, 1.0)
    shape = [1] * scores.ndim
    shape[axis] = n
    weights = weights.reshape(shape)
    return (scores * weights).sum(axis=axis) / weights.sum()


STATISTICS: dict[str, Statistic] = {
    "mean": lambda x: np.mean(x, axis=-1),
    "median": lambda x: np.median(x, axis=-1),
    "iqm": iqm,
}


def stratified_bootstrap_ci(
    scores: np.ndarray,
    statistic: Statistic,
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of `statistic` over `scores` shaped `[tasks, seeds]` (or `[seeds]`): each resample
    draws seeds with replacement within every task, then the statistic is taken over all draws."""
    scores = np.atleast_2d(np.asarray(scores, np.float64))
    tasks, seeds = scores.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, seeds, size=(num_resamples, tasks, seeds))
    resampled = np.take_along_axis(np.broadcast_to(scores, (num_resamples, tasks, seeds)), idx, axis=2)
    values = statistic(resampled.reshape(num_resamples, tasks * seeds))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(scores: np.ndarray, **bootstrap_kwargs) -> dict[str, float]:
    """Every statistic of `scores` with its bootstrap CI: {'iqm': .., 'iqm_low': .., 'iqm_high': .., ...}."""
    scores = np.asarray(scores, np.float64)
    out: dict[str, float] = {}
    for name, fn in STATISTICS.items():
        out[name] = float(fn(scores.reshape(1, -1))[0])
        out[f"{name}_low"], out[f"{name}_high"] = stratified_bootstrap_ci(scores, fn, **bootstrap_kwargs)
    return out
