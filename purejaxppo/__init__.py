"""purejaxppo: fused, jit-compiled PPO in JAX."""

from purejaxppo.acting import LoadedPolicy, load_policy
from purejaxppo.config import ConfigError, PPOConfig
from purejaxppo.envs import register_env
from purejaxppo.hparams import HParams
from purejaxppo.population import Member, Population
from purejaxppo.runner import RunResult
from purejaxppo.sweep import SweepResult, sweep
from purejaxppo.train import TrainState, make_train, make_trainer

__all__ = [
    "ConfigError", "HParams", "LoadedPolicy", "Member", "PPOConfig", "Population", "RunResult", "SweepResult", "TrainState",
    "load_policy", "make_train", "make_trainer", "register_env", "sweep",
]
__version__ = "0.1.0"
