"""How high can gymnax's Pendulum-v1 score on average? A near-optimal policy, against the published -130.

    python experiments/pendulum_ceiling.py [--theta-cells 721] [--speed-cells 641] [--torques 81] [--starts 2000]

The env is deterministic after its reset (theta uniform in [-pi, pi], theta_dot in [-1, 1]), 200 steps an
episode. Dynamic programming over a grid of (theta, theta_dot), with the value of the next step read off the
grid by bilinear interpolation, gives the best return-to-go of every step for `--torques` evenly spaced
torques. The policy that is greedy on it (one step ahead through the exact dynamics) is then run in the
env's own `step_env` from `--starts` start states of the env's own reset: its mean return is achieved, so
the best policy scores at least as much. Halving the grid shows how far the figure still moves with it.
The dynamics copied here are checked against `step_env` first.
"""

from __future__ import annotations

import argparse
import time

import gymnax
import jax
import jax.numpy as jnp
import numpy as np


def step(theta: jax.Array, theta_dot: jax.Array, u: jax.Array, p) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pendulum-v1's transition as gymnax writes it (checked against the env below): the reward is of the
    state before the step."""
    u = jnp.clip(u, -p.max_torque, p.max_torque)
    angle = ((theta + jnp.pi) % (2 * jnp.pi)) - jnp.pi
    reward = -(angle**2 + 0.1 * theta_dot**2 + 0.001 * u**2)
    new_dot = theta_dot + (3 * p.g / (2 * p.l) * jnp.sin(theta) + 3.0 / (p.m * p.l**2) * u) * p.dt
    new_dot = jnp.clip(new_dot, -p.max_speed, p.max_speed)
    return theta + new_dot * p.dt, new_dot, reward


def interpolate(table: jax.Array, theta: jax.Array, theta_dot: jax.Array, max_speed: float) -> jax.Array:
    """Bilinear read of `table` (theta cells over [-pi, pi), periodic; speed cells over [-max, max])."""
    n_th, n_sp = table.shape
    x = (((theta + jnp.pi) % (2 * jnp.pi)) / (2 * jnp.pi)) * n_th
    y = (jnp.clip(theta_dot, -max_speed, max_speed) + max_speed) / (2 * max_speed) * (n_sp - 1)
    x0, y0 = jnp.floor(x), jnp.minimum(jnp.floor(y), n_sp - 2)
    fx, fy = x - x0, y - y0
    i0, i1 = x0.astype(jnp.int32) % n_th, (x0.astype(jnp.int32) + 1) % n_th
    j0 = y0.astype(jnp.int32)
    return ((1 - fx) * (1 - fy) * table[i0, j0] + fx * (1 - fy) * table[i1, j0]
            + (1 - fx) * fy * table[i0, j0 + 1] + fx * fy * table[i1, j0 + 1])


def values(p, theta_cells: int, speed_cells: int, torques: jax.Array) -> jax.Array:
    """V[t] on the grid: the best return from step t to the episode's end, t = 0..T (V[T] = 0)."""
    theta = jnp.arange(theta_cells) / theta_cells * 2 * jnp.pi - jnp.pi
    speed = jnp.linspace(-p.max_speed, p.max_speed, speed_cells)
    th, sp = jnp.meshgrid(theta, speed, indexing="ij")

    def backup(nxt, _):
        def per_torque(u):
            th2, sp2, r = step(th, sp, u, p)
            return r + interpolate(nxt, th2, sp2, p.max_speed)

        v = jax.lax.map(per_torque, torques).max(axis=0)
        return v, v

    last = jnp.zeros((theta_cells, speed_cells))
    _, vs = jax.lax.scan(backup, last, None, length=p.max_steps_in_episode)
    return jnp.concatenate([vs[::-1], last[None]])  # vs[0] is V[T-1]


def run_greedy(env, p, table: jax.Array, torques: jax.Array, starts) -> jax.Array:
    """Each start's return in the env under the policy greedy on `table` (V[t+1] after step t)."""

    def episode(state):
        def body(state, v_next):
            th2, sp2, r = jax.vmap(lambda u: step(state.theta, state.theta_dot, u, p))(torques)
            u = torques[jnp.argmax(r + interpolate(v_next, th2, sp2, p.max_speed))]
            _, state, reward, _, _ = env.step_env(jax.random.key(0), state, u, p)
            return state, reward

        return jax.lax.scan(body, state, table[1:])[1].sum()

    return jax.jit(jax.vmap(episode))(starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--theta-cells", type=int, default=721)
    parser.add_argument("--speed-cells", type=int, default=641)
    parser.add_argument("--torques", type=int, default=81)
    parser.add_argument("--starts", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    env, p = gymnax.make("Pendulum-v1")
    starts = jax.vmap(lambda k: env.reset_env(k, p)[1])(jax.random.split(jax.random.key(args.seed), args.starts))

    # the copy of the dynamics must be the env's: compare 50 random steps from each start
    def check(state, key):
        u = jax.random.uniform(key, (), minval=-2.5, maxval=2.5)
        _, nxt, r, _, _ = env.step_env(key, state, u, p)
        th, thd, r2 = step(state.theta, state.theta_dot, u, p)
        return nxt, jnp.abs(jnp.stack([nxt.theta - th, nxt.theta_dot - thd, r - r2])).max()

    gap = float(jax.vmap(lambda s, k: jax.lax.scan(check, s, jax.random.split(k, 50))[1])(
        starts, jax.random.split(jax.random.key(args.seed + 1), args.starts)).max())
    if gap > 1e-5:
        raise SystemExit(f"the dynamics here differ from gymnax's step_env by {gap:g}")

    torques = jnp.linspace(-p.max_torque, p.max_torque, args.torques)
    print(f"gymnax Pendulum-v1 ({p.max_steps_in_episode} steps), {args.starts} start states of its reset (seed "
          f"{args.seed}), {args.torques} torques; the dynamics match step_env to {gap:.1e}")
    for scale in (2, 1):
        cells = ((args.theta_cells - 1) // scale + 1, (args.speed_cells - 1) // scale + 1)
        clock = time.perf_counter()
        table = jax.jit(values, static_argnums=(0, 1, 2))(p, *cells, torques)
        returns = np.asarray(run_greedy(env, p, table, torques, starts))
        predicted = np.asarray(interpolate(table[0], starts.theta, starts.theta_dot, p.max_speed))
        sem = returns.std(ddof=1) / np.sqrt(returns.size)
        print(f"grid {cells[0]} x {cells[1]}: greedy policy's mean return {returns.mean():8.2f} (standard error "
              f"{sem:.2f}), median {np.median(returns):8.2f}, worst {returns.min():8.2f}, best {returns.max():7.2f}; "
              f"the grid's own estimate {predicted.mean():8.2f}; {time.perf_counter() - clock:.0f} s")


if __name__ == "__main__":
    main()
