"""Brax's own PPO trainer (`brax.training.agents.ppo.train`) on the settings of one of our configs.

This script runs in the peer's Python: a separate environment with jax 0.9.2 and brax 0.14.2,
because Brax's trainer crashes on jax >= 0.10. It needs nothing of ours but this file, and imports
only the standard library at module level, so `experiments/brax_benchmark.py` can import the mapping
(`brax_train_kwargs`) and the compile timer (`CompileTimer`) under our own jax as well.

    <peer python> experiments/brax_peer.py --spec SPEC.json

SPEC.json is written by the benchmark: {"config": our resolved config as a dict, "source_unroll":
the notebook's unroll length or null, "seeds": [..]}. For each seed the script prints one line
`BRAX_PEER_RESULT {json}` with the final deterministic evaluation return, the env steps, the wall
time of the `ppo.train` call, the part of it spent tracing, lowering and compiling, and the eval curve.

Mapping from our config to `ppo.train` (settings of ours that have no counterpart are listed in
`unmapped`; Brax's defaults stay for everything not named here):

| ours | Brax |
|---|---|
| num_envs | num_envs |
| env_kwargs.episode_length / action_repeat / backend | episode_length / action_repeat / env backend |
| num_steps, num_envs, num_minibatches | unroll_length = the notebook's unroll (from the config's `Source:` line) when it divides num_steps, else num_steps; batch_size = num_steps x num_envs / (num_minibatches x unroll_length), the inverse of the config comment's num_steps = batch_size x num_minibatches x unroll_length / num_envs |
| update_epochs | num_updates_per_batch |
| num_updates x num_envs x num_steps (x action_repeat) | num_timesteps (the steps we train, in base-env steps as Brax counts them) |
| gamma, gae_lambda, clip_eps, lr, ent_coef, vf_coef | discounting, gae_lambda, clipping_epsilon, learning_rate, entropy_cost, vf_loss_coefficient |
| reward_scale, normalize_obs, normalize_advantages | reward_scaling, normalize_observations, normalize_advantage |
| eval_every, eval_episodes | num_evals = E + 1 (Brax also evaluates at step 0), num_eval_envs = eval_episodes, deterministic_eval = True; E = the divisor of num_updates nearest our number of evaluations, ceil(num_updates / eval_every) (see `brax_num_evals`) |
| seed | seed |

Left at Brax's defaults, as in Brax's training notebook: the networks (policy 4 x 32, value 5 x 256,
swish; ours: hidden_sizes for each), no gradient clipping (ours: max_grad_norm; `ppo.train` could take
it, the notebook does not set it), a constant learning
rate, tanh-squashed Gaussian with a state-dependent std.

Brax's trainer runs ceil(num_timesteps / (E x transitions per update)) updates between each of its E
evaluations, so it trains more updates than ours whenever E does not divide our num_updates (with
E = our evaluation count, the 50M-step ant config would train 160 updates, 52.4M steps, against
our 152 and 49.8M). E is therefore a divisor of num_updates, so both train exactly the same env steps;
the number of evaluations may then differ a little from ours (the kwargs record Brax's).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

RESULT_PREFIX = "BRAX_PEER_RESULT "

# JAX records these as time spans around tracing a jitted function, lowering it to MLIR and
# compiling it with XLA (jax._src.dispatch, the same names in jax 0.9.2 and 0.10.2).
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)

# Our config keys, with the values at which they change nothing, that Brax's ppo.train cannot express.
_NEUTRAL = {
    "lr_schedule": "constant",
    "ent_schedule": "constant",
    "clip_policy": True,
    "dual_clip": 0.0,
    "kl_coef": 0.0,
    "target_kl": 0.0,
    "clip_value": False,
    "normalize_reward": False,
    "obs_clip": 0.0,
    "reward_clip": 0.0,
    "distribution": "tanh_gaussian",
    "state_dependent_std": True,
}


class CompileTimer:
    """Wall-clock seconds spent tracing, lowering and compiling with JAX while active.

    It takes the union of the time spans JAX records for COMPILE_EVENTS, so a trace nested in
    another (jax 0.9 records those too) is not counted twice.
    """

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._active = False

    def _listener(self, event: str, start: float, end: float, **_: Any) -> None:
        if self._active and event in COMPILE_EVENTS:
            self.spans.append((start, end))

    def __enter__(self) -> CompileTimer:
        import jax.monitoring

        self.spans = []
        self._active = True
        jax.monitoring.register_event_time_span_listener(self._listener)
        return self

    def __exit__(self, *exc: Any) -> None:
        import jax.monitoring

        self._active = False
        jax.monitoring.unregister_event_time_span_listener(self._listener)

    @property
    def seconds(self) -> float:
        total, last_end = 0.0, -math.inf
        for start, end in sorted(self.spans):
            if end > last_end:
                total += end - max(start, last_end)
                last_end = end
        return total


def source_unroll(config_text: str) -> int | None:
    """The unroll length the config's `Source:` comment names (`unroll 5`), if any."""
    import re

    match = re.search(r"\bunroll (\d+)\b", config_text)
    return int(match.group(1)) if match else None


def brax_num_evals(num_updates: int, eval_every: int) -> int:
    """Brax's evaluations after step 0: the divisor of num_updates nearest ceil(num_updates / eval_every)
    (the smaller on a tie), so that Brax's ceil-rounded epochs train exactly num_updates updates."""
    wanted = math.ceil(num_updates / eval_every) if eval_every else 1
    divisors = [d for d in range(1, num_updates + 1) if num_updates % d == 0]
    return min(divisors, key=lambda d: (abs(d - wanted), d))


def brax_train_kwargs(config: dict[str, Any], unroll: int | None, seed: int) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments of Brax's `ppo.train` for our resolved config, and the list of our settings
    that have no counterpart there (each `key=value`). Raises ValueError when the batch cannot be split."""
    num_envs, num_steps, num_minibatches = config["num_envs"], config["num_steps"], config["num_minibatches"]
    env_kwargs = config.get("env_kwargs", {})
    action_repeat = int(env_kwargs.get("action_repeat", 1))
    unroll_length = unroll if unroll and num_steps % unroll == 0 else num_steps
    transitions = num_steps * num_envs
    if transitions % (num_minibatches * unroll_length):
        raise ValueError(
            f"num_envs x num_steps = {transitions} does not split into {num_minibatches} minibatches of "
            f"unroll_length {unroll_length}"
        )
    batch_size = transitions // (num_minibatches * unroll_length)
    num_updates = config["total_timesteps"] // transitions
    evals = brax_num_evals(num_updates, config.get("eval_every") or 0)
    kwargs = {
        "num_timesteps": num_updates * transitions * action_repeat,
        "num_envs": num_envs,
        "episode_length": int(env_kwargs.get("episode_length", 1000)),
        "action_repeat": action_repeat,
        "unroll_length": unroll_length,
        "batch_size": batch_size,
        "num_minibatches": num_minibatches,
        "num_updates_per_batch": config["update_epochs"],
        "discounting": config["gamma"],
        "gae_lambda": config["gae_lambda"],
        "clipping_epsilon": config["clip_eps"],
        "learning_rate": config["lr"],
        "entropy_cost": config["ent_coef"],
        "vf_loss_coefficient": config["vf_coef"],
        "reward_scaling": config["reward_scale"],
        "normalize_observations": config["normalize_obs"],
        "normalize_advantage": config["normalize_advantages"],
        "num_evals": evals + 1,
        "num_eval_envs": config["eval_episodes"],
        "deterministic_eval": True,
        "seed": seed,
    }
    unmapped = [f"{k}={config[k]}" for k, neutral in _NEUTRAL.items() if k in config and config[k] != neutral]
    unmapped.append(f"hidden_sizes={list(config['hidden_sizes'])} (Brax: policy 4x32, value 5x256)")
    if config["activation"] != "swish":
        unmapped.append(f"activation={config['activation']} (Brax: swish)")
    # ppo.train takes max_grad_norm, but the notebook's settings, which the peer keeps, leave it unset
    unmapped.append(f"max_grad_norm={config['max_grad_norm']} (Brax, as in its notebook: no clipping)")
    return kwargs, unmapped


def make_env(config: dict[str, Any]) -> Any:
    """The unwrapped Brax env of our config (`brax/<name>`); ppo.train adds its training wrappers."""
    from brax import envs

    env_kwargs = dict(config.get("env_kwargs", {}))
    rest = {k: v for k, v in env_kwargs.items() if k not in ("episode_length", "action_repeat")}
    rest.setdefault("backend", "positional")
    return envs.get_environment(config["env"].removeprefix("brax/"), **rest)


def train_one(config: dict[str, Any], unroll: int | None, seed: int) -> dict[str, Any]:
    """One `ppo.train` run, timed; returns the result record printed by `main`."""
    import jax
    from brax.training.agents.ppo import train as ppo

    kwargs, unmapped = brax_train_kwargs(config, unroll, seed)
    env = make_env(config)
    curve: list[dict[str, float]] = []
    with CompileTimer() as timer:
        start = time.perf_counter()

        def progress(step: int, metrics: dict[str, Any]) -> None:
            point = {"env_steps": int(step), "seconds": time.perf_counter() - start}
            if "eval/episode_reward" in metrics:
                point["eval_return"] = float(metrics["eval/episode_reward"])
            if "training/sps" in metrics:
                point["train_sps"] = float(metrics["training/sps"])
            curve.append(point)

        _, params, _ = ppo.train(environment=env, progress_fn=progress, **kwargs)
        jax.block_until_ready(params)
        wall = time.perf_counter() - start
    finite = [p["eval_return"] for p in curve if math.isfinite(p.get("eval_return", math.nan))]
    return {
        "seed": seed,
        "final_eval_return": finite[-1] if finite else math.nan,
        "eval_returns_finite": len(finite) == len([p for p in curve if "eval_return" in p]),
        "env_steps": curve[-1]["env_steps"] if curve else 0,
        "wall_time": wall,
        "compile_time": timer.seconds,
        "train_time": wall - timer.seconds,
        # Brax's notebook reports "time to jit" as the time to the first eval after step 0.
        "notebook_jit_time": curve[1]["seconds"] - curve[0]["seconds"] if len(curve) > 1 else math.nan,
        "curve": curve,
        "kwargs": kwargs,
        "unmapped": unmapped,
        "jax_version": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="JSON written by experiments/brax_benchmark.py")
    args = parser.parse_args()
    with open(args.spec) as f:
        spec = json.load(f)
    for seed in spec["seeds"]:
        result = train_one(spec["config"], spec.get("source_unroll"), seed)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
