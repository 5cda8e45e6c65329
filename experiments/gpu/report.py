"""Turn the output folders of GPU runs (experiments/gpu/run.sh) into a results page and its curves.

    python experiments/gpu/report.py OUTDIR [OUTDIR ...] --command "what was run" [--out experiments/results/gpu.md]

Reads each folder's versions.json, stages.json and <stage>.json (a later folder's stage replaces an
earlier one's), writes the markdown page with the hardware, the commands, every stage's status and
figures, the issue's targets met or not, and beside it a PNG of the ant evaluation curves (return
against env steps and against wall time, ours and Brax's trainer).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

TARGETS = {"ceiling": 0.5, "wall_to_brax": 0.7, "ant_return": (5000.0, 25_000_000), "sweep": (4096, 60.0)}


def read(folders: list[Path]) -> dict[str, Any]:
    """The stages' records, a later folder's replacing an earlier one's, with each folder's status."""
    found: dict[str, Any] = {"stages": {}}
    for folder in folders:
        for name in ("versions", "smoke", "ant", "sweep", "tune", "extra", "playground"):
            path = folder / f"{name}.json"
            if path.exists():
                found[name] = json.loads(path.read_text())
        status = folder / "stages.json"
        if status.exists():
            found["stages"].update(json.loads(status.read_text())["stages"])
    return found


def num(x: Any, spec: str = ",.1f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def steps_per_second(side: dict[str, Any]) -> float:
    """A trainer's env steps of all seeds per second of training (brax_benchmark.Side's, from its JSON)."""
    return sum(side["env_steps"]) / side["train_time"] if side["train_time"] > 0 else math.nan


def met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "missed")


def ant_section(ant: dict[str, Any]) -> tuple[list[str], dict[str, bool | None]]:
    ours, brax = ant.get("ours"), ant.get("brax", {})
    lines = [f"Config `{ant['config']}` {' '.join(ant['overrides'])}, {ant['env_steps']:,} env steps, one seed.", "",
             "| trainer | final eval return | compile s | train s | wall s | env steps/s |", "|---|---|---|---|---|---|"]
    checks: dict[str, bool | None] = {"ceiling": None, "wall_to_brax": None, "ant_return": None}
    for label, side in (("ours", ours), ("Brax ppo.train", brax if "trainer" in brax else None)):
        if side:
            lines.append(f"| {label} | {num(side['final_returns'][0])} | {num(side['compile_time'])} | "
                         f"{num(side['train_time'])} | {num(side['wall_time'])} | "
                         f"{num(steps_per_second(side), ',.0f')} |")
    if "unavailable" in brax:
        lines += ["", f"Brax's trainer did not run: {brax['unavailable']}."]
    if "ceiling" in ant:
        ratio = ant["ratio_to_ceiling"]
        checks["ceiling"] = ratio >= TARGETS["ceiling"]
        lines += ["", f"Ceiling (the rollout alone, no learning): {num(ant['ceiling']['ceiling_sps'], ',.0f')} env "
                      f"steps/s; ours trains at {ratio:.2f} of it (target >= {TARGETS['ceiling']})."]
    if ours:
        target, by = TARGETS["ant_return"]
        reached = [s for s, r in ours["eval_curves"][0] if r >= target]
        checks["ant_return"] = bool(reached) and reached[0] <= by
        lines += ["", f"Ours first evaluated at {target:,.0f} or more at "
                      f"{num(reached[0] if reached else math.nan, ',.0f')} env steps (target: by {by:,})."]
    timed = ant.get("time_to_brax_final")
    if timed:
        ratio = timed["ours_s"] / timed["brax_s"] if timed["brax_s"] else math.nan
        checks["wall_to_brax"] = math.isfinite(ratio) and ratio <= TARGETS["wall_to_brax"]
        lines += ["", f"Wall time to Brax's final eval return ({num(timed['target'])}), compile included: ours "
                      f"{num(timed['ours_s'])} s, Brax {num(timed['brax_s'])} s, ratio {num(ratio, '.2f')} "
                      f"(target <= {TARGETS['wall_to_brax']})."]
    return lines, checks


def sweep_section(sweep: dict[str, Any]) -> tuple[list[str], bool | None]:
    lines = [f"`{sweep['config']}` {' '.join(sweep['overrides'])}: {sweep['env_steps_per_agent']:,} env steps per "
             "agent, all seeds in one call.", "",
             "| seeds | wall s | compile s | run s | s per agent | env steps/s | final return IQM | min |",
             "|---|---|---|---|---|---|---|---|"]
    check = None
    for call in sweep["calls"]:
        lines.append(f"| {call['seeds']:,} | {num(call['wall_s'])} | {num(call['compile_s'])} | {num(call['run_s'])} "
                     f"| {num(call['s_per_agent'], '.3f')} | {num(call['env_steps_per_s'], ',.0f')} "
                     f"| {num(call['final_return_iqm'])} | {num(call['final_return_min'])} |")
        if call["seeds"] == TARGETS["sweep"][0]:
            check = call["wall_s"] < TARGETS["sweep"][1]
    return lines, check


def tune_section(tune: dict[str, Any]) -> list[str]:
    best = tune["best"]
    status = ", ".join(f"{n} {s}" for s, n in tune["status"].items())
    lines = [f"`{tune['config']}` {' '.join(tune['overrides'])}: {tune['trials']:,} trials of up to "
             f"{tune['updates_per_trial']} updates, {tune['slots']:,} at a time, ASHA (rungs at "
             f"{', '.join(map(str, tune['rungs']))} updates), random draws of {' '.join(tune['spaces'])}.", "",
             "| wall s | compile s | run s | updates run | env steps of trials | env steps/s | trials/s | trials |",
             "|---|---|---|---|---|---|---|---|",
             f"| {num(tune['wall_s'])} | {num(tune['compile_s'])} | {num(tune['run_s'])} | {tune['updates_run']:,} "
             f"| {tune['env_steps_of_trials']:,} | {num(tune['env_steps_per_s'], ',.0f')} "
             f"| {num(tune['trials_per_s'], ',.2f')} | {status} |"]
    if best is not None:
        values = ", ".join(f"{k}={v:.4g}" for k, v in best["values"].items())
        lines += ["", f"Best finished trial: {best['trial']} (seed {best['seed']}), {values}; final score "
                      f"{num(best['score'])}."]
    return lines


def extra_section(extra: dict[str, Any]) -> list[str]:
    lines = []
    rec = extra.get("recurrent", {})
    if rec:
        lines += ["Recurrent cost, velocity-hidden CartPole (configs/cartpole_pomdp_gru.yaml with "
                  f"{' '.join(rec.get('GRU', {}).get('overrides', []))}; the MLP with memory=none too):", "",
                  "| policy | env steps/s | vs MLP | compile s | final return |", "|---|---|---|---|---|"]
        base = rec.get("MLP", {}).get("env_steps_per_s", math.nan)
        for name, r in rec.items():
            lines.append(f"| {name} | {num(r['env_steps_per_s'], ',.0f')} | {num(r['env_steps_per_s'] / base, '.2f')}x "
                         f"| {num(r['compile_s'])} | {num(r['final_return'])} |")
        lines.append("")
    for env, side in extra.get("brax", {}).items():
        lines.append(f"- {env}: final eval return {num(side['final_returns'][0])} after {side['env_steps'][0]:,} env "
                     f"steps; compile {num(side['compile_time'])} s, train {num(side['train_time'])} s, "
                     f"{num(steps_per_second(side), ',.0f')} env steps/s")
    return lines


def playground_section(playground: dict[str, Any]) -> list[str]:
    lines = ["The shipped configs (`configs/playground/`), Playground's published PPO settings. Playground publishes "
             "its results as curves (arXiv 2502.08844), so set these beside them there.", "",
             "| task | env steps | of the budget | env steps/s | compile s | last eval return | last chunk's return |",
             "|---|---|---|---|---|---|---|"]
    for env, r in playground.items():
        progress, evals = r.get("progress", []), r.get("eval_curve", [])
        done = progress[-1][0] if progress else 0
        lines.append(f"| {env} | {done:,} | {num(100 * done / r['total_timesteps'], '.0f')}% "
                     f"| {num(r.get('env_steps_per_s'), ',.0f')} | {num(r.get('compile_s'))} "
                     f"| {num(evals[-1][1]) if evals else '-'} | {num(progress[-1][2]) if progress else '-'} |")
    return lines


def plot(ant: dict[str, Any], path: Path) -> bool:
    """The ant evaluation curves against env steps and wall time; False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours, brax = ant.get("ours"), ant.get("brax", {})
    if not ours:
        return False
    fig, (by_steps, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    steps, returns = zip(*ours["eval_curves"][0]) if ours["eval_curves"][0] else ((), ())
    by_steps.plot(steps, returns, label="ours")
    updates_at = {int(u): t for u, t in ours["extra"].get("chunk_ends", [])}
    by_time.plot([updates_at.get(s // ant["batch_size"], math.nan) for s in steps], returns, label="ours")
    if "trainer" in brax:
        b_steps, b_returns = zip(*brax["eval_curves"][0])
        by_steps.plot(b_steps, b_returns, label="Brax ppo.train")
        timed = brax["extra"].get("timed_curves", [[]])[0]
        if timed:
            by_time.plot(*zip(*timed), label="Brax ppo.train")
    by_steps.set(xlabel="env steps", ylabel="eval return", title="ant: return against env steps")
    by_time.set(xlabel="wall seconds from the call's start (compile included)", ylabel="eval return",
                title="ant: return against wall time")
    for ax in (by_steps, by_time):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def render(found: dict[str, Any], commands: list[str], png: Path) -> str:
    versions = found.get("versions", {})
    packages = ", ".join(f"{k} {v}" for k, v in versions.get("packages", {}).items() if v)
    lines = ["# purejaxppo on a GPU", "",
             f"Hardware: {versions.get('gpu', 'unknown')}; {versions.get('cpu_count', '?')} CPU cores; JAX backend "
             f"{versions.get('backend', '?')}, devices {versions.get('devices', '?')}.  ",
             f"Python {versions.get('python', '?')}; {packages}.", "", "Commands:", "", "```", *commands, "```", "",
             "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    for name, status in found["stages"].items():
        lines.append(f"| {name} | {status['status']}{' (' + status['why'] + ')' if 'why' in status else ''} "
                     f"| {num(status.get('seconds'))} |")
    checks: dict[str, bool | None] = {"ceiling": None, "wall_to_brax": None, "ant_return": None, "sweep": None}
    if "smoke" in found:
        smoke = found["smoke"]
        run = smoke.get("brax_run", {})
        lines += ["", "## Smoke", "", f"Tests: {smoke['tests']['summary']} ({num(smoke['tests']['seconds'])} s).",
                  f"Brax run: {run.get('updates', 'no')} updates of {run.get('env', '?')}, compile "
                  f"{num(run.get('compile_time'))} s, losses finite: {run.get('all_finite')}, params on "
                  f"{run.get('params_on', '?')}."]
    if "ant" in found:
        section, ant_checks = ant_section(found["ant"])
        checks.update(ant_checks)
        lines += ["", "## Brax ant: ours against Brax's trainer", "", *section]
        if plot(found["ant"], png):
            lines += ["", f"![ant evaluation curves]({png.name})"]
    if "sweep" in found:
        section, checks["sweep"] = sweep_section(found["sweep"])
        lines += ["", "## Sweep scaling: CartPole-v1", "", *section]
    if "tune" in found:
        lines += ["", "## Hyperparameter search: CartPole-v1", "", *tune_section(found["tune"])]
    if "extra" in found:
        lines += ["", "## Extra", "", *extra_section(found["extra"])]
    if "playground" in found:
        lines += ["", "## MuJoCo Playground", "", *playground_section(found["playground"])]
    lines += ["", "## Targets", "",
              f"- at least {TARGETS['ceiling']} of the rollout ceiling on ant: {met(checks['ceiling'])}",
              f"- wall time to Brax's final return at most {TARGETS['wall_to_brax']}x Brax's trainer: "
              f"{met(checks['wall_to_brax'])}",
              f"- ant above {TARGETS['ant_return'][0]:,.0f} by {TARGETS['ant_return'][1]:,} env steps: "
              f"{met(checks['ant_return'])}",
              f"- {TARGETS['sweep'][0]} CartPole agents in one call in under {TARGETS['sweep'][1]:.0f} s: "
              f"{met(checks['sweep'])}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--command", action="append", default=[], help="a command that made the folders")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "gpu.md")
    args = parser.parse_args()
    found = read(args.folders)
    args.out.write_text(render(found, args.command, args.out.with_suffix(".png")))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
