"""`HParams`: the config's traced hyperparameters as float32 arrays in the training state.

Its fields are the config fields whose metadata says `traced`, so the compiled program, sweeps and
checkpoints read the one declaration in `config.py`. Under `vmap` each run carries its own values.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from purejaxppo.config import TRACED, PPOConfig


def _from_config(cls: type, config: PPOConfig) -> Any:
    return cls(**{name: jnp.float32(getattr(config, name)) for name in TRACED})


HParams = flax.struct.dataclass(
    type(
        "HParams",
        (),
        {
            "__annotations__": {name: jax.Array for name in TRACED},
            "__module__": __name__,
            "__doc__": "The float hyperparameters the compiled program reads as traced values: "
            + ", ".join(TRACED) + ".",
            "from_config": classmethod(_from_config),
        },
    )
)
