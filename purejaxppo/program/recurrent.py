"""Recurrent cores and the episode boundaries of their carried state, as pure functions of arrays.

The GRU and LSTM steps take their input already projected (`x @ W_i + b_i`), so a sequence's input
projections are computed for all its steps at once and only the recurrent product runs step by
step. A carry is any pytree whose leaves have the batch shape as their leading dims. Where a batch entry
starts an episode, its carry goes back to the initial value before the step that sees the episode's
first observation; the carry that saw an episode's last observation is never passed into the next.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Carry = Any


def gru(h: jax.Array, projected: jax.Array, kernel: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One GRU step (Cho et al. 2014, the reset gate applied after the recurrent product, as in cuDNN,
    PyTorch and flax). `projected` `[..., 3H]` holds the input's reset, update and candidate
    projections; `kernel` `[H, 3H]` and `bias` `[3H]` the recurrent ones. Returns (carry, output)."""
    x_r, x_z, x_n = jnp.split(projected, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(h @ kernel + bias, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    new = (1.0 - z) * n + z * h
    return new, new


def lstm(
    carry: tuple[jax.Array, jax.Array], projected: jax.Array, kernel: jax.Array, bias: jax.Array
) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """One LSTM step (Hochreiter & Schmidhuber 1997, with a forget gate) on the carry (c, h).
    `projected` `[..., 4H]` holds the input's input, forget, cell and output gate projections;
    `kernel` `[H, 4H]` and `bias` `[4H]` the recurrent ones. Returns ((c, h), h)."""
    c, h = carry
    i, f, g, o = jnp.split(projected + h @ kernel + bias, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h


CELLS = {"gru": (gru, 3), "lstm": (lstm, 4)}  # each step and its number of gates


def reset(carry: Carry, initial: Carry, first: jax.Array) -> Carry:
    """`carry` with the entries where `first` holds replaced by `initial` (broadcast over the rest)."""

    def pick(c: jax.Array, i: jax.Array) -> jax.Array:
        mask = jnp.reshape(first, first.shape + (1,) * (c.ndim - first.ndim))
        return jnp.where(mask, jnp.broadcast_to(i, c.shape), c)

    return jax.tree.map(pick, carry, initial)


def starts(done: jax.Array) -> jax.Array:
    """Of a time-major rollout `[T, ...]` whose carry was already reset at its first step: whether the
    carry resets before step t, which is where step t - 1 ended an episode."""
    return jnp.concatenate([jnp.zeros_like(done[:1]), done[:-1]], axis=0)


def unroll(
    step: Callable[[Carry, Any], tuple[Carry, Any]], carry: Carry, initial: Carry, inputs: Any, first: jax.Array
) -> tuple[Carry, Any]:
    """Run `step(carry, x) -> (carry, y)` over time-major `inputs`, resetting the carry to `initial`
    before each step where `first` holds. Returns the last carry and the stacked outputs."""

    def body(c: Carry, xs: tuple[Any, jax.Array]) -> tuple[Carry, Any]:
        x, f = xs
        return step(reset(c, initial, f), x)

    return jax.lax.scan(body, carry, (inputs, first))
