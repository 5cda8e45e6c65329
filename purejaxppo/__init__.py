"""purejaxppo: fused, jit-compiled PPO in JAX.

The layout shows what runs where: `program/` is the compiled program (the PPO update and its math, the
policy, in-program evaluation and PBT's step), `host/` drives it (prepare, the chunk loop, a search's
judging and refills, signals, checkpoints, the run dir, metrics, trained policies), `envs/` holds the
env protocol and its families, and the front ends (`single`, `sweep`, `pbt`, `tune`, the CLI) build
populations through `host.prepare`.
"""

from purejaxppo.config import PPOConfig
from purejaxppo.envs import register_env
from purejaxppo.errors import ConfigError
from purejaxppo.host.loop import RunResult
from purejaxppo.host.population import Member, Population
from purejaxppo.host.prepare import Prepared, prepare
from purejaxppo.host.trained import LoadedPolicy, load_policy
from purejaxppo.program.hparams import HParams
from purejaxppo.program.ppo import PPO, TrainState, make_ppo, make_train
from purejaxppo.single import train
from purejaxppo.sweep import SweepResult, sweep
from purejaxppo.tune import TuneConfig, TuneResult, tune

__all__ = [
    "PPO", "ConfigError", "HParams", "LoadedPolicy", "Member", "PPOConfig", "Population", "Prepared", "RunResult",
    "SweepResult", "TrainState", "TuneConfig", "TuneResult", "load_policy", "make_ppo", "make_train", "prepare",
    "register_env", "sweep", "train", "tune",
]
__version__ = "0.1.0"
