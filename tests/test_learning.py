"""Learning runs with the shipped configs and fixed seeds. The asserts read what the run computed."""

from pathlib import Path

import numpy as np
import pytest

from purejaxppo import config as config_lib
from purejaxppo import runner

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_cartpole_default_config_learns():
    config = config_lib.load(ROOT / "configs" / "cartpole.yaml")
    result = runner.train(config)
    returns = result.metrics["episode_return"][0]
    assert result.env_steps == config.num_updates * config.batch_size
    assert np.nanmean(returns[-10:]) >= 400.0, returns[-10:]
    assert np.nanmean(returns[:5]) < 100.0  # it started from a poor policy: the gain is learned


def test_pendulum_config_learns():
    config = config_lib.load(ROOT / "configs" / "pendulum.yaml")
    result = runner.train(config)
    returns = result.metrics["episode_return"][0]
    finished = returns[np.isfinite(returns)]
    assert finished[:3].mean() < -900.0, finished[:3]  # near a random policy's -1200 at first
    assert finished[-5:].mean() >= -400.0, finished[-5:]
