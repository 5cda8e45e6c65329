"""Learning curves against env steps: one line per single run, and per sweep grid point the IQM over
seeds with a 95% stratified-bootstrap band. Reads what runs write (metrics.csv, runs.csv)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from purejaxppo.errors import ConfigError
from purejaxppo.host import metrics as metrics_lib
from purejaxppo.host import stats


@dataclasses.dataclass
class Curves:
    """Curves of one metric: `values[group, seed, update]` against `env_steps[update]`."""

    label: str
    groups: list[str]
    env_steps: np.ndarray
    values: np.ndarray


def image_path(out: str, default_name: str) -> Path:
    """Where `plot --out OUT` writes: OUT, or `OUT/default_name` when OUT is a folder (or ends in a slash);
    a name without a suffix gets `.png`. A suffix matplotlib cannot write is one ConfigError line."""
    from matplotlib.figure import Figure

    path = Path(out)
    if path.is_dir() or out.endswith(("/", "\\")):
        path = path / default_name
    if not path.suffix:
        path = path.with_name(f"{path.name}.png")
    kinds = Figure().canvas.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in kinds:
        raise ConfigError(f"--out: {path} ends in {path.suffix}, an image type matplotlib cannot write; use one of "
                          f"{', '.join(f'.{k}' for k in sorted(kinds))}")
    return path


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


def read_curves(run_dir: str | Path, metric: str = "episode_return") -> Curves:
    """The curves of a run dir's metrics.csv, finished or in progress: one line for a single run, and
    for a sweep one group per grid point (from runs.csv), with its seeds."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run dir {run_dir} does not exist")
    path = run_dir / metrics_lib.FILE
    if not path.is_file():
        raise ConfigError(f"run dir {run_dir} has no {metrics_lib.FILE}")
    data = metrics_lib.read(path)
    if not data:
        raise ConfigError(f"{path} has no rows yet")
    if metric not in data:
        raise ConfigError(f"metric: {path} has no '{metric}'; it has {', '.join(data)}")
    values, steps = data[metric], data["env_steps"][0]
    runs = metrics_lib.read_runs(run_dir)[: values.shape[0]]
    if len(runs) != values.shape[0] or values.shape[0] == 1:
        return Curves(run_dir.name, [run_dir.name], steps, values[None])
    keys = [k for k in runs[0] if k not in ("run", "point", "seed", "final_return", "auc")]
    points = sorted({int(r["point"]) for r in runs}, key=int)
    groups, stacked = [], []
    for g in points:
        members = [i for i, r in enumerate(runs) if int(r["point"]) == g]
        first = runs[members[0]]
        groups.append(", ".join(f"{k}={float(first[k]):g}" for k in keys) or run_dir.name)
        stacked.append(values[members])
    if len({len(m) for m in stacked}) != 1:
        raise ConfigError(f"{run_dir}: its grid points have unequal numbers of runs")
    return Curves(run_dir.name, groups, steps, np.stack(stacked))


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


def plot_pbt(rows: Sequence[dict], names: Sequence[str], env_steps: np.ndarray, best: np.ndarray,
             out: str | Path) -> None:
    """A PBT run (its lineage rows, as pbt.lineage_rows gives them): each explored hyperparameter per member
    over env steps, the members' scores at each PBT step, and the best member's learning curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(names) + 2
    fig, axes = plt.subplots(panels, 1, figsize=(7, 2.4 * panels), sharex=True)
    members = sorted({int(r["member"]) for r in rows})
    for k in members:
        mine = [r for r in rows if int(r["member"]) == k]
        steps = [r["env_steps"] for r in mine]
        for ax, name in zip(axes, names):
            ax.step(steps, [r[name] for r in mine], where="post", lw=0.8, alpha=0.7)
        scored = [r for r in mine if np.isfinite(r["score"])]
        axes[-2].plot([r["env_steps"] for r in scored], [r["score"] for r in scored], ".", ms=3, alpha=0.6)
    for ax, name in zip(axes, names):
        ax.set_ylabel(name)
        if all(r[name] > 0 for r in rows):
            ax.set_yscale("log")
    axes[-2].set_ylabel("score")
    axes[-1].plot(env_steps, smooth_curves(best[None])[0])
    axes[-1].set_ylabel("best member's\nepisode return")
    axes[-1].set_xlabel("env steps")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_tune(rows: Sequence[dict], budgets: np.ndarray, best: tuple[np.ndarray, np.ndarray] | None,
              out: str | Path) -> None:
    """A search (its trial rows, as tune.trial_rows gives them): each trial's score against the budget it
    reached (rungs at `budgets` env steps), and the best finished trial's learning curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(7, 6))
    columns = [f"score_{b}" for b in budgets]
    for row in rows:
        scores = np.array([row[c] for c in columns], np.float64)
        reached = np.isfinite(scores)
        axes[0].plot(budgets[reached], scores[reached], ".-", lw=0.8, ms=4, alpha=0.6)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("env steps of the trial (rungs)")
    axes[0].set_ylabel("score")
    if best is not None:
        axes[1].plot(best[0], smooth_curves(np.asarray(best[1])[None])[0])
    axes[1].set_xlabel("env steps")
    axes[1].set_ylabel("best trial's\nepisode return")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
