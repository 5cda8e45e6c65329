"""purejaxppo: fused, jit-compiled PPO in JAX."""

import os

# XLA's CPU backend can wedge its Eigen thread pool on large vmapped scans: every thread idles and
# the result never arrives (seen here with 4- and 64-run sweeps on jax 0.10.2; reported upstream
# in other projects too). Single-threaded Eigen avoids it. Set before JAX starts its backend;
# a user's own XLA_FLAGS setting of this flag wins.
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

from purejaxppo.acting import load_policy
from purejaxppo.config import ConfigError, PPOConfig
from purejaxppo.sweep import SweepResult, sweep
from purejaxppo.train import HParams, TrainState, make_train, make_trainer

__all__ = [
    "ConfigError", "HParams", "PPOConfig", "SweepResult", "TrainState", "load_policy", "make_train", "make_trainer",
    "sweep",
]
__version__ = "0.1.0"
