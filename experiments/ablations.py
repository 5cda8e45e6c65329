"""Ablations of PPO's variants on CartPole-v1 and Pendulum-v1: one 16-seed sweep call per variant.

    python experiments/ablations.py [--out experiments/results] [--seeds 16] [--envs cartpole,pendulum]
                                    [--steps-cartpole 50000] [--steps-pendulum 120000] [--only NAME,...]

Each variant is a set of config overrides on configs/cartpole.yaml or configs/pendulum.yaml. Most
variants change the program's structure (not just traced values), so each is its own sweep call
(compiled once, 16 seeds vmapped). For each variant the script reports the final return (mean episode
return over the last 10% of updates) as IQM and mean with 95% stratified-bootstrap CIs, the IQM's
difference to the default, a marker where the IQM CIs do not overlap the default's, a diagnostic of
the variant where there is one, and compile and run times. It writes `ablations.md`, `ablations.png`
and raw CSVs under `ablations/` in `--out`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import multiprocessing
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from purejaxppo import config as config_lib  # noqa: E402
from purejaxppo.host import stats  # noqa: E402
from purejaxppo.config import PPOConfig  # noqa: E402
from purejaxppo.sweep import SweepResult, sweep  # noqa: E402

Diagnostic = Callable[[SweepResult], str]


@dataclasses.dataclass(frozen=True)
class Env:
    key: str  # command-line name
    name: str  # gymnax name, for display
    config_path: Path
    default_steps: int


ENVS: dict[str, Env] = {
    "cartpole": Env("cartpole", "CartPole-v1", ROOT / "configs" / "cartpole.yaml", 50_000),
    "pendulum": Env("pendulum", "Pendulum-v1", ROOT / "configs" / "pendulum.yaml", 120_000),
}


def minibatch_steps(result: SweepResult) -> str:
    """Mean minibatch steps taken per update (KL early stopping) out of the full epochs x minibatches."""
    config = result.config
    taken = float(np.mean(result.metrics["minibatch_steps"]))
    full = config.update_epochs * config.num_minibatches
    return f"minibatch steps/update {taken:.1f} of {full}"


def final_kl_beta(result: SweepResult) -> str:
    """Mean over runs of the adaptive KL coefficient after the last update, and its range."""
    final = result.metrics["kl_beta"][:, -1]
    return f"final kl_beta mean {np.mean(final):.3g} (range {np.min(final):.3g} to {np.max(final):.3g})"


def dual_clip_fraction(result: SweepResult) -> str:
    """Mean over runs and updates of the fraction of samples the dual-clip bound replaced."""
    return f"dual-clip fraction {np.mean(result.metrics['dual_clip_fraction']):.2e}"


@dataclasses.dataclass(frozen=True)
class Variant:
    key: str  # command-line name (--only)
    name: str  # display name
    overrides: tuple[str, ...]  # `key=value` items applied on top of the env's config
    envs: tuple[str, ...] = ("cartpole", "pendulum")
    diagnostic: Diagnostic | None = None


VARIANTS: tuple[Variant, ...] = (
    Variant("default", "default", ()),
    Variant("clip_value", "clip_value", ("clip_value=true",)),
    Variant("dual_clip", "dual_clip=3", ("dual_clip=3",), diagnostic=dual_clip_fraction),
    Variant("kl_penalty", "KL penalty, no clip", ("clip_policy=false", "kl_coef=1", "kl_target=0.01"),
            diagnostic=final_kl_beta),
    Variant("clip_kl", "clip + KL penalty", ("kl_coef=1", "kl_target=0.01"), diagnostic=final_kl_beta),
    Variant("target_kl", "target_kl=0.01", ("target_kl=0.01",), diagnostic=minibatch_steps),
    Variant("ent_linear", "entropy linear to 0", ("ent_schedule=linear", "ent_coef_final=0"), envs=("cartpole",)),
    Variant("no_adv_norm", "no advantage norm", ("normalize_advantages=false",)),
    Variant("shared_torso", "shared torso", ("shared_torso=true",)),
    Variant("layer_norm", "layer norm", ("layer_norm=true",)),
    Variant("obs_norm", "obs norm (clip 10)", ("normalize_obs=true", "obs_clip=10")),
    Variant("reward_norm", "reward norm", ("normalize_reward=true",)),
    Variant("tanh_gaussian", "tanh_gaussian", ("distribution=tanh_gaussian",), envs=("pendulum",)),
    Variant("beta", "beta", ("distribution=beta",), envs=("pendulum",)),
    Variant("state_std", "state-dependent std", ("distribution=gaussian", "state_dependent_std=true"),
            envs=("pendulum",)),
)

SKIPPED: dict[str, list[tuple[str, str]]] = {
    "cartpole": [
        ("tanh_gaussian, beta, state-dependent std", "CartPole's actions are discrete: the policy is categorical."),
    ],
    "pendulum": [
        ("entropy linear to 0", "configs/pendulum.yaml has ent_coef 0, so an entropy schedule to 0 is the default."),
    ],
}


@dataclasses.dataclass
class Row:
    env: str
    variant: str
    overrides: str
    finals: np.ndarray
    summary: dict[str, float]
    diagnostic: str
    compile_time: float
    run_time: float
    non_finite: int  # runs whose losses or KL went non-finite
    no_return: int  # runs that never completed an episode (left out of the statistics)
    filled: int  # runs whose final return is that of their last completed episodes (see final_returns)
    attempts: int = 1  # sweep calls made: more than 1 when an earlier one hung or crashed
    error: str = ""  # why the variant has no result, when every attempt failed


def base_config(env: Env, steps: int) -> PPOConfig:
    return config_lib.load(env.config_path, [f"total_timesteps={steps}"])


def final_returns(result: SweepResult) -> tuple[np.ndarray, int]:
    """`result.final_returns()`, except that a run in which no episode ended during the last 10% of
    updates (NaN there: e.g. a perfect CartPole policy, whose 500-step episodes outlast a short tail)
    gets the return of the last episodes it completed. Returns (finals, number of runs so filled)."""
    finals = result.final_returns()
    filled = 0
    for run in np.flatnonzero(~np.isfinite(finals)):
        curve = result.metrics["episode_return"][run]
        seen = curve[np.isfinite(curve)]
        if seen.size:
            finals[run], filled = seen[-1], filled + 1
    return finals, filled


def count_non_finite(result: SweepResult) -> int:
    """Runs whose losses or KL went non-finite at any update."""
    bad = np.zeros(len(result.runs), bool)
    for name in ("policy_loss", "value_loss", "approx_kl"):
        if name in result.metrics:
            bad |= ~np.isfinite(result.metrics[name]).all(axis=1)
    return int(bad.sum())


def variant_config(env: Env, variant: Variant, steps: int) -> PPOConfig:
    """The env's config with the variant's overrides. JAX's persistent compilation cache is turned off
    (where the package has one), so that the compile times reported are those of a cold compile."""
    overrides = [f"total_timesteps={steps}", *variant.overrides]
    if "compilation_cache" in config_lib.FIELDS:
        overrides.append("compilation_cache=")
    return config_lib.load(env.config_path, overrides)


def run_variant(env: Env, variant: Variant, steps: int, seeds: int) -> Row:
    """One sweep call of `seeds` runs of the variant, summarised."""
    result = sweep(variant_config(env, variant, steps), seeds=seeds)
    finals, filled = final_returns(result)
    finite = finals[np.isfinite(finals)]
    summary = stats.summarize(finite) if finite.size else {}
    return Row(
        env=env.name,
        variant=variant.name,
        overrides=", ".join(variant.overrides) or "-",
        finals=finals,
        summary=summary,
        diagnostic=variant.diagnostic(result) if variant.diagnostic else "",
        compile_time=result.compile_time,
        run_time=result.run_time,
        non_finite=count_non_finite(result),
        no_return=int((~np.isfinite(finals)).sum()),
        filled=filled,
    )


def _variant_worker(conn: Connection, env_key: str, variant_key: str, steps: int, seeds: int) -> None:
    """Child-process entry point: run one variant and send back ("ok", Row) or ("error", message)."""
    try:
        variant = next(v for v in VARIANTS if v.key == variant_key)
        conn.send(("ok", run_variant(ENVS[env_key], variant, steps, seeds)))
    except Exception as exc:  # reported by the parent, which carries on with the next variant
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_isolated(env_key: str, variant: Variant, steps: int, seeds: int, timeout: float, attempts: int) -> Row:
    """Run the variant in a fresh process, killed and retried when it gives no result within `timeout`
    seconds. XLA's CPU backend can wedge (every thread idle, the result never ready; see
    experiments/results/performance.md), and a wedged call cannot be interrupted from Python."""
    ctx = multiprocessing.get_context("spawn")
    problem = ""
    for attempt in range(1, attempts + 1):
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_variant_worker, args=(sender, env_key, variant.key, steps, seeds), daemon=True)
        proc.start()
        sender.close()
        try:
            status, payload = receiver.recv() if receiver.poll(timeout) else ("hang", None)
        except EOFError:
            status, payload = "crash", None
        if proc.is_alive():
            proc.kill()
        proc.join()
        if status == "ok":
            payload.attempts = attempt
            return payload
        problem = {"hang": f"no result after {timeout:.0f} s", "crash": f"process died (exit {proc.exitcode})"}.get(
            status, payload)
        print(f"{ENVS[env_key].name:<12} {variant.name:<22} attempt {attempt} of {attempts} failed: {problem}",
              flush=True)
    return Row(ENVS[env_key].name, variant.name, ", ".join(variant.overrides) or "-", np.full(seeds, np.nan), {},
               "", float("nan"), float("nan"), 0, 0, 0, attempts, problem)


def marker(row: Row, default: Row) -> str:
    """'▲' / '▼' when the variant's IQM CI lies wholly above / below the default's; '' otherwise."""
    if not row.summary or not default.summary or row is default:
        return ""
    if row.summary["iqm_low"] > default.summary["iqm_high"]:
        return "▲"
    if row.summary["iqm_high"] < default.summary["iqm_low"]:
        return "▼"
    return ""


def fmt_ci(summary: dict[str, float], name: str) -> str:
    if not summary:
        return "nan"
    return f"{summary[name]:.1f} [{summary[name + '_low']:.1f}, {summary[name + '_high']:.1f}]"


def row_notes(row: Row) -> str:
    """The diagnostic column: the variant's diagnostic, then anything odd about its runs."""
    notes = [row.diagnostic] if row.diagnostic else []
    if row.filled:
        notes.append(f"{row.filled} run(s) with no episode end in the last 10%: last completed return used")
    if row.no_return:
        notes.append(f"{row.no_return} run(s) never ended an episode, left out")
    if row.non_finite:
        notes.append(f"{row.non_finite} run(s) with non-finite losses")
    if row.error:
        notes.append(f"FAILED after {row.attempts} attempt(s): {row.error}")
    elif row.attempts > 1:
        notes.append(f"result of attempt {row.attempts} (earlier ones hung or crashed)")
    return "; ".join(notes) or "-"


def table_cells(row: Row, default: Row | None) -> list[str]:
    diff = "-"
    if default is not None and row is not default and row.summary and default.summary:
        diff = f"{row.summary['iqm'] - default.summary['iqm']:+.1f}"
    mark = marker(row, default) if default is not None else ""
    overrides = f"`{row.overrides}`" if row.overrides != "-" else "-"
    return [row.variant, overrides, fmt_ci(row.summary, "iqm"), fmt_ci(row.summary, "mean"), diff, mark,
            row_notes(row), f"{row.compile_time:.1f}", f"{row.run_time:.1f}"]


HEADER = ["variant", "overrides", "IQM [95% CI]", "mean [95% CI]", "ΔIQM vs default", "CI sep.", "diagnostic",
          "compile s", "run s"]


def print_row(row: Row, default: Row | None) -> None:
    cells = table_cells(row, default)
    print(f"{row.env:<12} {cells[0]:<22} IQM {cells[2]:<26} mean {cells[3]:<26} d {cells[4]:>7} {cells[5]:1} "
          f"compile {cells[7]:>5} s run {cells[8]:>6} s  {cells[6]}", flush=True)


def markdown_table(rows: Sequence[Row]) -> list[str]:
    default = next((r for r in rows if r.variant == "default"), None)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(table_cells(r, default)) + " |" for r in rows]
    return lines


def hardware() -> str:
    model, cores = platform.processor() or "unknown CPU", "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model, cores = fields.get("Model name", model).strip(), fields.get("CPU(s)", cores).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    import jax

    devices = ", ".join(sorted({d.platform for d in jax.devices()}))
    return (f"{model}, {cores} CPU cores (lscpu); JAX {jax.__version__} on {devices}; "
            f"Python {platform.python_version()}")


def write_markdown(path: Path, rows_by_env: dict[str, list[Row]], steps: dict[str, int], seeds: int,
                   command: str, total_wall: float, machine: str) -> None:
    lines = [
        "# Ablations of PPO variants on CartPole-v1 and Pendulum-v1",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now().strftime('%Y-%m-%d %H:%M')}  ",
        f"Machine: {machine}  ",
        f"Seeds: {seeds} per variant (seeds 0 to {seeds - 1}), all in one compiled, vmapped sweep call per variant.  ",
        f"Total wall time of the script: {total_wall / 60:.1f} min.",
        "",
        "Final return = mean episode return over the last 10% of updates of each run; IQM and mean over seeds "
        "with 95% stratified-bootstrap CIs (`purejaxppo.stats`). ΔIQM is the variant's IQM minus the default's. "
        "CI sep.: ▲ / ▼ when the variant's IQM CI lies wholly above / below the default's (non-overlapping "
        "CIs; overlapping ones do not prove there is no difference). Compile and run times are those of the "
        "variant's sweep call. Each variant changes only the listed keys of the env's config. A run in which "
        "no episode ended during the last 10% of updates (a perfect CartPole policy's 500-step episodes can "
        "outlast that window) would have a NaN final return; it gets the return of the last episodes it "
        "completed instead, and the diagnostic column counts such runs. Each sweep call runs in a fresh "
        "process with JAX's persistent compilation cache off (compile times are cold compiles); a call that "
        "gives no result within the group timeout (XLA CPU wedge) is killed and retried, as noted.",
        "",
    ]
    for env_key, rows in rows_by_env.items():
        env = ENVS[env_key]
        config = base_config(env, steps[env_key])
        lines += [
            f"## {env.name}: {config.num_updates * config.batch_size:,} env steps per run",
            "",
            f"Base: `{env.config_path.relative_to(ROOT)}` with `total_timesteps={config.total_timesteps}` "
            f"({config.num_updates} updates of {config.num_envs} envs x {config.num_steps} steps, "
            f"{config.update_epochs} epochs x {config.num_minibatches} minibatches).",
            "",
            *markdown_table(rows),
            "",
        ]
        for names, why in SKIPPED.get(env_key, []):
            lines.append(f"Skipped on {env.name}: {names}. {why}")
        lines.append("")
    lines += ["![IQM of the final return per variant](ablations.png)", ""]
    path.write_text("\n".join(lines))


def write_csvs(out: Path, rows: Sequence[Row]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "finals.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["env", "variant", "seed_index", "final_return"])
        for row in rows:
            writer.writerows([row.env, row.variant, i, f"{v:.6g}"] for i, v in enumerate(row.finals))
    keys = ["iqm", "iqm_low", "iqm_high", "mean", "mean_low", "mean_high", "median", "median_low", "median_high"]
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["env", "variant", "overrides", *keys, "diagnostic", "filled", "no_return", "non_finite",
                         "compile_s", "run_s"])
        for row in rows:
            values = [f"{row.summary.get(k, float('nan')):.6g}" for k in keys]
            writer.writerow([row.env, row.variant, row.overrides, *values, row.diagnostic, row.filled, row.no_return,
                             row.non_finite, f"{row.compile_time:.2f}", f"{row.run_time:.2f}"])


def plot(path: Path, rows_by_env: dict[str, list[Row]], steps: dict[str, int]) -> bool:
    """One panel per env: horizontal bars of the IQM with 95% CI whiskers; default highlighted.
    Returns False (and writes nothing) when no variant has a result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = [k for k, rows in rows_by_env.items() if any(r.summary for r in rows)]
    if not envs:
        return False
    height = max(len(rows_by_env[k]) for k in envs) * 0.42 + 1.4
    fig, axes = plt.subplots(1, len(envs), figsize=(6.5 * len(envs), height), squeeze=False)
    for ax, env_key in zip(axes[0], envs):
        rows = [r for r in rows_by_env[env_key] if r.summary]
        y = np.arange(len(rows))[::-1]
        iqms = np.array([r.summary["iqm"] for r in rows])
        err = np.array([[r.summary["iqm"] - r.summary["iqm_low"], r.summary["iqm_high"] - r.summary["iqm"]]
                        for r in rows]).T
        colors = ["tab:orange" if r.variant == "default" else "tab:blue" for r in rows]
        # Bars start at the panel's left edge, so negative returns (Pendulum) read the same way.
        left = min(0.0, float(np.min(iqms - err[0]))) * 1.05
        ax.barh(y, iqms - left, left=left, color=colors, alpha=0.75, xerr=err, capsize=3, ecolor="black")
        default = next((r for r in rows if r.variant == "default"), None)
        if default is not None:
            ax.axvline(default.summary["iqm"], color="tab:orange", linestyle="--", linewidth=1)
        ax.set_yticks(y, [r.variant for r in rows])
        ax.set_xlim(left=left)
        ax.set_xlabel("final return, IQM over seeds with 95% CI")
        config = base_config(ENVS[env_key], steps[env_key])
        ax.set_title(f"{ENVS[env_key].name}, {config.num_updates * config.batch_size:,} env steps")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--envs", default="cartpole,pendulum", help="comma-separated: cartpole, pendulum")
    parser.add_argument("--steps-cartpole", type=int, default=ENVS["cartpole"].default_steps)
    parser.add_argument("--steps-pendulum", type=int, default=ENVS["pendulum"].default_steps)
    parser.add_argument("--only", default="",
                        help=f"comma-separated variants to run, of {', '.join(v.key for v in VARIANTS)} "
                             "(default always runs)")
    parser.add_argument("--group-timeout", type=float, default=300.0,
                        help="seconds before a variant's sweep is taken as hung, killed and retried")
    parser.add_argument("--attempts", type=int, default=3, help="tries per variant")
    args = parser.parse_args(argv)
    args.envs = [e.strip() for e in args.envs.split(",") if e.strip()]
    unknown = [e for e in args.envs if e not in ENVS]
    if unknown:
        parser.error(f"unknown env(s) {unknown}; choose from {list(ENVS)}")
    args.only = [v.strip() for v in args.only.split(",") if v.strip()]
    unknown = [v for v in args.only if v not in {variant.key for variant in VARIANTS}]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {[v.key for v in VARIANTS]}")
    return args


def selected_variants(env_key: str, only: Sequence[str]) -> list[Variant]:
    return [v for v in VARIANTS if env_key in v.envs and (not only or v.key in only or v.key == "default")]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    command = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]).as_posix()), *sys.argv[1:]])
    steps = {"cartpole": args.steps_cartpole, "pendulum": args.steps_pendulum}
    machine = hardware()
    print(f"{machine}; {args.seeds} seeds per variant", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows_by_env: dict[str, list[Row]] = {k: [] for k in args.envs}
    for env_key in args.envs:
        env = ENVS[env_key]
        base = base_config(env, steps[env_key])
        print(f"== {env.name}: {base.num_updates * base.batch_size:,} env steps per run", flush=True)
        for variant in selected_variants(env_key, args.only):
            row = run_isolated(env_key, variant, steps[env_key], args.seeds, args.group_timeout, args.attempts)
            rows_by_env[env_key].append(row)
            default = next((r for r in rows_by_env[env_key] if r.variant == "default"), None)
            print_row(row, default)
            all_rows = [r for rows in rows_by_env.values() for r in rows]
            write_csvs(args.out / "ablations", all_rows)
            write_markdown(args.out / "ablations.md", rows_by_env, steps, args.seeds, command,
                           time.perf_counter() - start, machine)
    plotted = plot(args.out / "ablations.png", rows_by_env, steps)
    total = time.perf_counter() - start
    write_markdown(args.out / "ablations.md", rows_by_env, steps, args.seeds, command, total, machine)
    wrote = [args.out / "ablations.md", *([args.out / "ablations.png"] if plotted else [])]
    print(f"total wall time {total:.0f} s ({total / 60:.1f} min); wrote {', '.join(map(str, wrote))}", flush=True)


if __name__ == "__main__":
    main()
