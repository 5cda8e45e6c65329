"""MuJoCo Playground on the CPU: names, refusals (nothing downloaded), and a few PPO updates through the host
loop with a checkpoint (MJX states hold zero-size arrays), a bit-identical resume and an evaluation. The
adapter's flags, final observations and resets are in test_env_conformance.py; learning is proved on a GPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco_playground", reason="the playground extra is not installed")

from purejaxppo import train  # noqa: E402
from purejaxppo.config import load  # noqa: E402
from purejaxppo.envs import known_envs, make_env  # noqa: E402
from purejaxppo.errors import ConfigError  # noqa: E402
from purejaxppo.host.trained import evaluate_run  # noqa: E402

from conftest import CACHE, leaves_equal  # noqa: E402

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs" / "playground").glob("*.yaml"))
TINY = dataclasses.replace(
    load(CONFIGS[0]), env_kwargs={"episode_length": 20}, num_envs=4, num_steps=10, total_timesteps=4 * 10 * 4,
    num_minibatches=2, update_epochs=2, hidden_sizes=(16,), eval_every=2, eval_episodes=2, checkpoint_every=2,
    log_every=2, compilation_cache=CACHE,
)


def test_the_suite_is_listed_and_the_shipped_configs_load():
    names = known_envs()
    assert {"playground/CartpoleBalance", "playground/CheetahRun", "playground/WalkerWalk",
            "playground/HopperHop"} <= set(names)
    assert len(CONFIGS) >= 4
    for path in CONFIGS:
        config = load(path)
        make_env(config.env, config.env_kwargs)
        assert "Source: Playground" in path.read_text()


def test_menagerie_tasks_are_refused_and_nothing_is_downloaded():
    from mujoco_playground._src import mjx_env

    had = mjx_env.MENAGERIE_PATH.exists()
    for name in ("playground/Go1JoystickFlatTerrain", "playground/PandaPickCube"):
        with pytest.raises(ConfigError, match="MuJoCo Menagerie.*loads nothing from the internet"):
            make_env(name)
    assert mjx_env.MENAGERIE_PATH.exists() == had


@pytest.mark.parametrize("kwargs, message", [
    ({"episode_lenght": 5}, "did you mean 'episode_length'"),
    ({"episode_length": 0}, "episode_length: must be an integer >= 1"),
    ({"impl": "cuda"}, "unknown MJX implementation 'cuda'"),
    ({"vision": True}, "Madrona"),
    ({"ctrl_dt": "fast"}, "ctrl_dt: a time step"),
    ({"sim_dt": 0}, "sim_dt: a time step in seconds, > 0"),
    ({"impl": "warp"}, "warp runs MJX on an NVIDIA GPU only"),
])
def test_bad_env_kwargs_are_refused_before_loading(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_env("playground/CartpoleBalance", kwargs)


def test_unknown_tasks_get_suggestions():
    with pytest.raises(ConfigError, match="did you mean 'playground/CheetahRun'"):
        make_env("playground/CheetaRun")


def test_a_few_updates_checkpoint_resume_and_evaluate(tmp_path):
    straight = train(TINY, tmp_path / "straight")
    m = {name: values[0] for name, values in straight.metrics.items()}
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm", "policy_std"):
        assert np.isfinite(m[name]).all(), name
    assert np.isfinite(m["eval_return"][1::2]).all()  # evaluated at each chunk's end
    cut = train(TINY, tmp_path / "cut", until_update=2)
    resumed = train(TINY, tmp_path / "cut", resume=True)
    assert cut.stopped and leaves_equal(resumed.state, straight.state)  # env states with zero-size arrays too
    source, returns, lengths = evaluate_run(tmp_path / "straight", episodes=2)
    assert source.step == TINY.num_updates and np.all(lengths == 20) and np.isfinite(returns).all()
