"""Config loading, overrides and every validation error. Nothing here compiles."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from purejaxppo import cli
from purejaxppo import config as config_lib
from purejaxppo.config import ConfigError, PPOConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_defaults_are_valid_and_frozen():
    config = config_lib.validate(PPOConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = config_lib.load(path)
    assert config.num_updates >= 1


def test_overrides_are_parsed_to_the_field_type(tmp_path):
    config = config_lib.load(
        None, ["lr=3e-4", "num_envs=8", "hidden_sizes=[32, 16]", "normalize_advantages=false", "env=Acrobot-v1",
               "gamma=1"]
    )
    assert config.lr == 3e-4 and isinstance(config.lr, float)
    assert config.num_envs == 8 and config.hidden_sizes == (32, 16)
    assert config.normalize_advantages is False and config.env == "Acrobot-v1"
    assert config.gamma == 1.0 and isinstance(config.gamma, float)


def test_yaml_round_trip(tmp_path):
    config = PPOConfig(lr=1e-3, hidden_sizes=(8, 8), env_kwargs={"max_steps_in_episode": 100})
    config_lib.save(config, tmp_path / "c.yaml")
    assert config_lib.load(tmp_path / "c.yaml") == config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["learning_rate=0.1"], "learning_rate: unknown config key; did you mean 'lr'?"),
        (["num_env=8"], "did you mean 'num_envs'?"),
        (["lr=fast"], "lr: expected float, got 'fast'"),
        (["num_envs=2.5"], "num_envs: expected int"),
        (["hidden_sizes=64"], "hidden_sizes: expected list of int"),
        (["normalize_advantages=3"], "normalize_advantages: expected bool"),
        (["lr=-0.001"], "lr: must be > 0.0, got -0.001"),
        (["gamma=1.5"], "gamma: must be <= 1.0, got 1.5"),
        (["gamma=-0.1"], "gamma: must be >= 0.0"),
        (["clip_eps=0"], "clip_eps: must be > 0.0, got 0.0"),
        (["num_envs=0"], "num_envs: must be >= 1"),
        (["lr_schedule=step"], "lr_schedule: must be one of constant, linear, cosine, warmup_cosine"),
        (["activation=sigmoid"], "activation: must be one of"),
        (["num_envs=3", "num_steps=5", "num_minibatches=4"], "num_minibatches: num_envs * num_steps = 15 is not divisible"),
        (["total_timesteps=100", "num_envs=4", "num_steps=128"], "total_timesteps: 100 is smaller than one batch"),
        (["env=CartPole-v9"], "env: unknown environment 'CartPole-v9'; known: CartPole-v1, Pendulum-v1"),
        (["env_kwargs={max_step: 3}"], "max_step: unknown env_kwargs parameter of CartPole-v1; did you mean"),
        (["lr_schedule=warmup_cosine"], "lr_warmup_fraction: must be > 0 with lr_schedule warmup_cosine"),
        (["lr=nan"], "lr: must be finite"),
        (["nonsense"], "nonsense: an override must look like key=value"),
        (["env_kwargs={max_steps_in_episode: abc}"], "env_kwargs.max_steps_in_episode: expected an integer like its "
                                                     "default 500, got 'abc'"),
        (["env=Acrobot-v1", "env_kwargs={available_torque: 1.0}"], "env_kwargs.available_torque: expected a list of 3"),
        (["env=MNISTBandit-bsuite"], "env: MNISTBandit-bsuite downloads its dataset"),
        (["seed=4294967296"], "seed: must be <= 4294967295"),
        (["state_dependent_std=true"], "state_dependent_std: applies to gaussian and tanh_gaussian, not categorical"),
        (["lr=1e-3", "lr_end=2e-3"], "lr_end: 0.002 is above the peak lr 0.001"),
        (["hidden_sizes=[]"], "hidden_sizes: needs at least one entry"),
    ],
)
def test_validation_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        config_lib.load(None, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [("lr: [1, 2\n", "is not valid YAML"), ("- lr\n", "must hold a mapping of keys to values")],
)
def test_a_bad_config_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config_lib.load(path)
    with pytest.raises(ConfigError, match="config: no such file"):
        config_lib.load(tmp_path / "missing.yaml")


def test_config_reference_is_up_to_date():
    assert (ROOT / "docs" / "config.md").read_text() == config_lib.reference_markdown()


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gama: 0.9\n")
    with pytest.raises(ConfigError, match="gama: unknown config key; did you mean 'gamma'"):
        config_lib.load(bad)
    with pytest.raises(ConfigError, match="no such file"):
        config_lib.load(tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        config_lib.load(listed)


def test_cli_returns_2_on_config_error(capsys):
    assert cli.main(["train", "--set", "clip_eps=-1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "purejaxppo: error: clip_eps: must be > 0.0, got -1.0"


def test_cli_process_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "purejaxppo", "train", "--set", "num_minibatches=7", "--run-dir", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "num_minibatches:" in proc.stderr and "not divisible by num_minibatches = 7" in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing written before the config was accepted


def test_optional_loggers_need_their_package():
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match=r"wandb: needs the wandb package; pip install 'purejaxppo\[wandb\]'"):
            PPOConfig().replace(wandb=True)
    else:
        assert PPOConfig().replace(wandb=True).wandb
