"""Learning curves against env steps: one line per single run, and per sweep grid point the IQM over
seeds with a 95% stratified-bootstrap band. Reads what runs write (metrics.csv, metrics.npz)."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from purejaxppo import stats
from purejaxppo.config import ConfigError


@dataclasses.dataclass
class Curves:
    """Curves of one metric: `values[group, seed, update]` against `env_steps[update]`."""

    label: str
    groups: list[str]
    env_steps: np.ndarray
    values: np.ndarray


def smooth_curves(curves: np.ndarray) -> np.ndarray:
    """Carry the last finite value forward over updates where none was reported (no episode ended)."""
    out = np.array(curves, np.float64)
    flat = out.reshape(-1, out.shape[-1])
    for row in flat:
        last = np.nan
        for i, v in enumerate(row):
            if np.isfinite(v):
                last = v
            else:
                row[i] = last
    return flat.reshape(out.shape)


def curves_of_sweep(
    metrics: dict[str, np.ndarray], runs: list[dict[str, Any]], keys: list[str], label: str,
    metric: str = "episode_return",
) -> Curves:
    points = sorted({r["point"] for r in runs})
    groups = [", ".join(f"{k}={runs[[r['point'] for r in runs].index(g)][k]:g}" for k in keys) or label for g in points]
    values = np.stack([metrics[metric][[i for i, r in enumerate(runs) if r["point"] == g]] for g in points])
    return Curves(label, groups, np.asarray(metrics["env_steps"][0], np.float64), values)


def read_curves(run_dir: str | Path, metric: str = "episode_return") -> Curves:
    """The curves of a finished sweep (metrics.npz), a sweep in progress (metrics_partial.npz) or a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run dir {run_dir} does not exist")
    for name in ("metrics.npz", "metrics_partial.npz"):
        if (run_dir / name).is_file():
            with np.load(run_dir / name) as data:
                if metric not in data.files:
                    raise ConfigError(f"metric: {run_dir / name} has no '{metric}'; it has {', '.join(data.files)}")
                keys = sorted(k[len("param_"):] for k in data.files if k.startswith("param_"))
                if keys:
                    combos = np.stack([data[f"param_{k}"] for k in keys], axis=1)
                    _, point = np.unique(combos, axis=0, return_inverse=True)
                    runs = [{"point": int(p), **{k: float(c) for k, c in zip(keys, row)}}
                            for p, row in zip(point.ravel(), combos)]
                else:
                    runs = [{"point": 0} for _ in range(data[metric].shape[0])]
                return curves_of_sweep({metric: data[metric], "env_steps": data["env_steps"]}, runs, keys,
                                       run_dir.name, metric)
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise ConfigError(f"run dir {run_dir} has no metrics.csv or metrics.npz")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ConfigError(f"{path} has no rows yet")
    if metric not in rows[0]:
        raise ConfigError(f"metric: {path} has no '{metric}'; it has {', '.join(k for k in rows[0] if k != 'update')}")
    steps = np.array([float(r["env_steps"]) for r in rows])
    values = np.array([float(r[metric]) for r in rows])[None, None]
    return Curves(run_dir.name, [run_dir.name], steps, values)


def plot_learning_curves(
    curves: Sequence[Curves], out: str | Path, metric: str = "episode_return", num_resamples: int = 500
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    many_seeds = False
    for c in curves:
        smooth = smooth_curves(c.values)
        for group, runs in zip(c.groups, smooth):
            label = group if len(curves) == 1 or group == c.label else f"{c.label}: {group}"
            if runs.shape[0] == 1:
                ax.plot(c.env_steps, runs[0], label=label)
                continue
            many_seeds = True
            ok = np.isfinite(runs).all(axis=0)
            line = np.array([stats.iqm(col) if good else np.nan for col, good in zip(runs.T, ok)])
            band = np.array([stats.stratified_bootstrap_ci(col, stats.iqm, num_resamples=num_resamples) if good
                             else (np.nan, np.nan) for col, good in zip(runs.T, ok)])
            ax.plot(c.env_steps, line, label=f"{label} ({runs.shape[0]} seeds)")
            ax.fill_between(c.env_steps, band[:, 0], band[:, 1], alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel(metric.replace("_", " ") + (" (IQM over seeds, 95% CI)" if many_seeds else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
