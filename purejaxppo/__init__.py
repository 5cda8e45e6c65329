"""purejaxppo: fused, jit-compiled PPO in JAX."""

from purejaxppo.config import ConfigError, PPOConfig
from purejaxppo.train import HParams, TrainState, make_train, make_trainer

__all__ = ["ConfigError", "HParams", "PPOConfig", "TrainState", "make_train", "make_trainer"]
__version__ = "0.1.0"
