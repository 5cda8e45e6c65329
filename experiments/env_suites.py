"""Train one config per env suite on the CPU and write experiments/results/env_suites.md.

    python experiments/env_suites.py [--cases breakout_mlp breakout_cnn craftax ...] [--seeds 1] [--steps N]
    python experiments/env_suites.py --cases     # no case: only writes the page from the stored ones

Each case trains its shipped config for the budget below (the config's own total_timesteps unless the
case sets one), through `purejaxppo.train`, so compile time is apart from the run's wall time. A case's
figures are stored in experiments/results/env_suites/<case>.json as it finishes, and the page is
written from every stored case, so cases can be run one at a time.

Training return: the mean episode return over the last 10% of updates, of the episodes that completed in
them (short episodes complete more often, so where lengths vary widely it leans towards them), per
seed. Trained policy and random policy: the mean return of the first episode of 256 envs, each played
to its end (at most 10,000 steps), with actions sampled from the final policy as in training, or drawn
uniformly among the legal ones (the mask, where the env gives one). Env steps/s: the run's env steps
over its wall time without compile, learning included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.benchmark import report_head  # noqa: E402
from purejaxppo import config as config_lib  # noqa: E402
from purejaxppo import envs, make_ppo, train  # noqa: E402
from purejaxppo.program.distributions import Categorical, MultiCategorical  # noqa: E402

RESULTS = ROOT / "experiments" / "results"
STORE = RESULTS / "env_suites"


@dataclasses.dataclass(frozen=True)
class Case:
    config: str  # under configs/
    budget: int = 0  # env steps; 0: the config's total_timesteps
    published: str = ""  # a published PPO figure for the env, with its source


MINATAR = "28 at 10M env steps, a 2 x 256 MLP (gymnax README's PPO column; gymnax-blines' config)"
JUMANJI = "none as a number (Jumanji's paper shows A2C curves only)"
XMINIGRID = "none for Empty-8x8; the repo's CPU debug config (Empty-6x6, 100k env steps) says 0.8+"
CASES = {
    "breakout_mlp": Case("breakout_minatar.yaml", published=MINATAR),
    "breakout_cnn": Case("breakout_minatar_cnn.yaml", published=MINATAR),
    "craftax": Case("craftax/classic_symbolic.yaml", published="none at this budget; at 1B env steps PPO averages 90% "
                    "of the optimum (Craftax paper, abstract)"),
    "jumanji_snake": Case("jumanji/snake.yaml", published=JUMANJI),
    "jumanji_knapsack": Case("jumanji/knapsack.yaml", published=JUMANJI),
    "xminigrid_empty": Case("xminigrid/empty_8x8.yaml", published=XMINIGRID),
    "xminigrid_empty_gru": Case("xminigrid/empty_8x8_gru.yaml", published=XMINIGRID),
}
EPISODES = 256
MAX_STEPS = 10_000


def first_episodes(env: Any, choose: Any, episodes: int = EPISODES) -> Any:
    """A function of (key, initial carry) giving the return of the first episode of `episodes` envs, each
    played to its end (at most MAX_STEPS steps) with `choose(key, obs, env_states, carry) -> (actions,
    carry)`."""
    # each env plays one episode, so its reset after the end is never needed
    step = getattr(env, "step_without_reset", env.step)

    def run(key: jax.Array, carry: Any) -> jax.Array:
        k_reset, k_steps = jax.random.split(key)
        obs, state = jax.vmap(env.reset)(jax.random.split(k_reset, episodes))

        def running(loop: tuple) -> jax.Array:
            t, _, _, _, _, done, _ = loop
            return (t < MAX_STEPS) & ~done.all()

        def body(loop: tuple) -> tuple:
            t, key, obs, state, carry, done, returns = loop
            key, k_act, k_env = jax.random.split(key, 3)
            action, carry = choose(k_act, obs, state, carry)
            out = jax.vmap(step)(jax.random.split(k_env, episodes), state, action)
            returns = returns + jnp.where(done, 0.0, out.reward)
            return t + 1, key, out.obs, out.state, carry, done | out.terminated | out.truncated, returns

        init = (jnp.int32(0), k_steps, obs, state, carry, jnp.zeros(episodes, bool), jnp.zeros(episodes))
        return jax.lax.while_loop(running, body, init)[-1]

    return run


def random_return(env: Any, key: jax.Array) -> float:
    """Uniformly random legal actions (the mask, where the env gives one)."""
    space = env.action_space

    def choose(key: jax.Array, obs: jax.Array, states: Any, carry: Any) -> tuple[jax.Array, Any]:
        if not space.discrete:
            return jax.random.uniform(key, (obs.shape[0], *space.shape), minval=space.low, maxval=space.high), carry
        logits = jnp.zeros((obs.shape[0], space.n))
        mask = envs.action_masks(env, states)
        dist = MultiCategorical(logits, space.nvec, mask) if space.nvec else Categorical(logits, mask)
        return dist.sample(key), carry

    return float(np.mean(np.asarray(jax.jit(first_episodes(env, choose))(key, ()))))


def policy_return(ppo: Any, params: Any, obs_stats: Any, key: jax.Array) -> float:
    """The trained policy's actions, sampled as in training (masked where the env masks)."""
    env, policy = ppo.env, ppo.policy

    def choose(key: jax.Array, obs: jax.Array, states: Any, carry: Any) -> tuple[jax.Array, Any]:
        dist, _, carry = policy.apply(params, obs_stats, obs, carry, envs.action_masks(env, states))
        return dist.env_action(dist.sample(key)), carry

    run = first_episodes(env, choose)
    return float(np.mean(np.asarray(jax.jit(run)(key, policy.initial_carry((EPISODES,))))))


def measure(name: str, seeds: int, steps: int = 0) -> dict[str, Any]:
    case = CASES[name]
    config = config_lib.load(ROOT / "configs" / case.config, ["compilation_cache="])
    if steps or case.budget:
        config = config.replace(total_timesteps=steps or case.budget)
    finals, curves, speeds, compiles, trained = [], [], [], [], []
    ppo = make_ppo(config)
    for seed in range(seeds):
        result = train(config.replace(seed=seed))
        final = jax.tree.map(lambda x: x[0], result.state)
        trained.append(policy_return(ppo, final.params, final.obs_stats, jax.random.key(seed)))
        steps = np.asarray(result.metrics["env_steps"][0], float)
        returns = np.asarray(result.metrics["episode_return"][0], float)
        finals.append(float(result.final_return))
        curves.append([[s, r] for s, r in zip(steps.tolist(), returns.tolist())])
        speeds.append(config.num_updates * config.batch_size / result.run_time)
        compiles.append(result.compile_time)
        print(f"{name} seed {seed}: final {finals[-1]:.2f}, trained policy {trained[-1]:.2f}, "
              f"{speeds[-1]:,.0f} env steps/s, compile {compiles[-1]:.1f} s", flush=True)
    return {"case": name, "config": case.config, "env": config.env, "torso": config.torso, "memory": config.memory,
            "env_steps": config.num_updates * config.batch_size, "finals": finals, "trained": trained,
            "speeds": speeds, "compiles": compiles, "random": random_return(ppo.env, jax.random.key(0)),
            "curves": curves, "published": case.published}


def at_fraction(curve: list[list[float]], fraction: float) -> float:
    """The mean return of the updates around `fraction` of the run (a window of 5% of its updates)."""
    returns = np.array([r for _, r in curve], float)
    end = max(1, round(fraction * len(returns)))
    window = returns[max(0, end - max(1, len(returns) // 20)):end]
    window = window[np.isfinite(window)]
    return float(window.mean()) if window.size else float("nan")


def report(results: list[dict[str, Any]], command: str) -> str:
    lines = report_head("Env suites: Craftax, Jumanji, XLand-MiniGrid, MinAtar with a CNN", command, __doc__)
    lines += ["| env | config | torso | env steps | env steps/s | compile s | training return at 25% / 50% / "
              "end | trained policy | random policy | published PPO |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        torso = r["torso"] + ("" if r["memory"] == "none" else f" + {r['memory']}")
        early = " / ".join(f"{np.mean([at_fraction(c, f) for c in r['curves']]):.2f}" for f in (0.25, 0.5))
        finals = ", ".join(f"{f:.2f}" for f in r["finals"])
        trained = ", ".join(f"{f:.2f}" for f in r["trained"])
        lines.append(f"| {r['env']} | `configs/{r['config']}` | {torso} | {r['env_steps']:,} | "
                     f"{np.mean(r['speeds']):,.0f} | {np.mean(r['compiles']):.1f} | {early} / {finals} | {trained} | "
                     f"{r['random']:.2f} | {r['published'] or '-'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=0, help="env steps per run instead of each case's (a smoke test)")
    args = parser.parse_args()
    STORE.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        started = time.time()
        result = measure(name, args.seeds, args.steps)
        result["command"] = " ".join(["python experiments/env_suites.py", *sys.argv[1:]])
        result["wall_s"] = time.time() - started
        (STORE / f"{name}.json").write_text(json.dumps(result))
    stored = [json.loads((STORE / f"{n}.json").read_text()) for n in CASES if (STORE / f"{n}.json").is_file()]
    commands = sorted({r["command"] for r in stored})
    text = report(stored, commands[0] if len(commands) == 1 else
                  "python experiments/env_suites.py --cases CASE ... (each case's own in env_suites/<case>.json)")
    (RESULTS / "env_suites.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
