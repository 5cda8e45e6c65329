"""Config loading, overrides, every validation error, and the one declaration of the traced keys.
Nothing here compiles."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from purejaxppo import config as config_lib
from purejaxppo import envs
from purejaxppo.config import PPOConfig
from purejaxppo.errors import ConfigError
from purejaxppo.program.hparams import HParams
from purejaxppo.program.ppo import make_ppo

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_defaults_are_valid_and_frozen():
    config = config_lib.validate(PPOConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_with_every_value_they_set(path):
    written = yaml.safe_load(path.read_text())
    config = config_lib.load(path).to_dict()
    for key, value in written.items():
        assert config[key] == (list(value) if isinstance(value, tuple) else value), key


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
    assert config_lib.load(tmp_path / "c.yaml") == config  # every key, inert ones at their defaults too


def test_yaml_merges_and_keys_that_cannot_be_keys(tmp_path):
    (tmp_path / "merged.yaml").write_text("x-base: &base {max_steps_in_episode: 50}\nenv_kwargs:\n  <<: *base\n")
    with pytest.raises(ConfigError, match="x-base: unknown config key"):  # the merge itself reads as YAML means
        config_lib.load(tmp_path / "merged.yaml")
    (tmp_path / "list-key.yaml").write_text("[lr, gamma]: 1\n")
    with pytest.raises(ConfigError, match="list-key.yaml is not valid YAML"):
        config_lib.load(tmp_path / "list-key.yaml")
    assert config_lib.yaml_load("a: &a {b: 1}\nc:\n  <<: *a\n  d: 2\n") == {"a": {"b": 1}, "c": {"b": 1, "d": 2}}


def test_exponents_without_a_dot_are_numbers_everywhere(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 3e-4\nenv: Pendulum-v1\nenv_kwargs: {dt: 5e-2}\n")
    config = config_lib.load(tmp_path / "c.yaml", ["ent_coef=1E-3"])
    assert (config.lr, config.env_kwargs["dt"], config.ent_coef) == (3e-4, 0.05, 1e-3)
    assert config_lib.load(None, ["env=Pendulum-v1", "env_kwargs={dt: 5e-2}"]).env_kwargs == {"dt": 0.05}


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
        (["lr_schedule=warmup_cosine"], "lr_warmup_fraction: must be > 0 with lr_schedule warmup_cosine"),
        (["lr=nan"], "lr: must be finite"),
        (["nonsense"], "nonsense: an override must look like key=value"),
        (["seed=4294967296"], "seed: must be <= 4294967295"),
        (["lr=1e-3", "lr_end=2e-3"], "lr_end: 0.002 is above the peak lr 0.001"),
        (["hidden_sizes=[]"], "hidden_sizes: needs at least one entry"),
        (["num_envs=4", "num_steps=2", "num_minibatches=8"], "num_minibatches: 8 minibatches of one sample each, with "
                                                             "normalize_advantages, make every advantage 0"),
        (["ent_coef_final=0.001"], "ent_coef_final: has no effect because ent_schedule is constant; drop it"),
        (["lr_schedule=constant", "lr_end=1e-5"], "lr_end: has no effect because lr_schedule is constant"),
        (["env_kwargs={a: 1, a: 2}"], "a: given twice in one mapping (line 1); give each key once"),
    ],
)
def test_validation_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        config_lib.load(None, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["env=CartPole-v9"], "env: unknown environment 'CartPole-v9'; known: CartPole-v1, Pendulum-v1"),
        (["env_kwargs={max_step: 3}"], "max_step: unknown env_kwargs parameter of CartPole-v1; did you mean"),
        (["env_kwargs={max_steps_in_episode: abc}"], "env_kwargs.max_steps_in_episode: expected an integer like its "
                                                     "default 500, got 'abc'"),
        (["env=Acrobot-v1", "env_kwargs={available_torque: 1.0}"], "env_kwargs.available_torque: expected a list of 3"),
        (["env=MNISTBandit-bsuite"], "env: MNISTBandit-bsuite downloads its dataset"),
        (["state_dependent_std=true"], "state_dependent_std: applies to gaussian and tanh_gaussian, not categorical"),
        (["distribution=beta"], "distribution: beta does not fit the discrete actions of CartPole-v1"),
        (["env=Pendulum-v1", "distribution=categorical"], "categorical does not fit the continuous"),
    ],
)
def test_what_needs_the_env_is_checked_when_a_trainer_is_made(overrides, message):
    config = config_lib.load(None, overrides)  # validation builds no env, so it passes these
    with pytest.raises(ConfigError) as err:
        make_ppo(config)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_validation_builds_no_env(monkeypatch):
    built = []
    monkeypatch.setattr(envs, "make_env", lambda *a, **k: built.append(a))
    for _ in range(3):
        PPOConfig().replace(lr=1e-3, env="Acrobot-v1")
    assert built == []


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.yaml", "lr: [1, 2\n", "is not valid YAML"),
        ("list.yaml", "- lr\n", "must hold a mapping of keys to values"),
        ("typo.yaml", "gama: 0.9\n", "gama: unknown config key; did you mean 'gamma'"),
        ("twice.yaml", "lr: 1e-3\ngamma: 0.9\nlr: 3e-4\n", r"twice.yaml: lr: given twice in one mapping \(line 3\)"),
        ("missing.yaml", None, "config: no such file"),
    ],
)
def test_a_bad_config_file_is_one_clear_error(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config_lib.load(path)


def test_config_reference_is_up_to_date():
    assert (ROOT / "docs" / "config.md").read_text() == config_lib.reference_markdown()


@pytest.mark.parametrize("flag, module", [("wandb", "wandb"), ("tensorboard", "tensorboardX")])
def test_optional_loggers_need_their_package(monkeypatch, flag, module):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))
    with pytest.raises(ConfigError, match=rf"{flag}: needs the {module} package; pip install 'purejaxppo\[{flag}\]'"):
        PPOConfig().replace(**{flag: True})


def test_traced_keys_are_declared_once_and_derived_everywhere():
    declared = [name for name, f in config_lib.FIELDS.items() if f.metadata.get("traced")]
    assert list(config_lib.TRACED) == declared
    assert list(HParams.__dataclass_fields__) == declared  # HParams is made from the declaration
    assert set(config_lib.SWITCHES) == {"dual_clip", "kl_coef", "target_kl", "ref_kl_coef"} <= set(declared)
    assert "total_timesteps" in config_lib.RUN_CONTROL_KEYS and "lr" not in config_lib.RUN_CONTROL_KEYS
    table = config_lib.reference_markdown()
    for name in config_lib.FIELDS:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert ("*Traced.*" in row) == (name in declared), name


def test_inert_keys_say_why():
    base = PPOConfig()
    assert config_lib.inert_reason(base.replace(lr_schedule="constant"), "lr_end") == "lr_schedule is constant"
    assert config_lib.inert_reason(base, "lr_end") is None  # the default schedule is linear
    assert config_lib.inert_reason(base, "value_clip_eps") == "clip_value is off"
    assert config_lib.inert_reason(base.replace(clip_value=True), "value_clip_eps") is None
    assert config_lib.inert_reason(base, "lr") is None
