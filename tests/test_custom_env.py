"""The user's own env: an object from Python, an import path in a config, a registered name; gymnax 1.x
and old five-value envs; every bad input one line with exit status 2; load_policy, eval and resume.

The envs are defined here, so their import paths are `test_custom_env:<Name>` (pytest puts tests/ on
sys.path; CLI subprocesses get it through PYTHONPATH).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment, spaces

from purejaxppo import LoadedPolicy, envs, load_policy, make_ppo, make_train, train
from purejaxppo import cli as cli_lib
from purejaxppo.config import PPOConfig, load
from purejaxppo.envs import ActionSpace, EnvStep, make_env, register_env
from purejaxppo.errors import ConfigError
from purejaxppo.host import checkpoint
from purejaxppo.host.record import Signature
from purejaxppo.host.trained import evaluate_run, read_trained, with_pretrained

from conftest import CACHE, cli, leaves_equal, one_error_line

TESTS = Path(__file__).resolve().parent


@struct.dataclass
class CorridorState(environment.EnvState):
    pos: jax.Array
    time: int


@struct.dataclass
class CorridorParams(environment.EnvParams):
    max_steps_in_episode: int = 40


class Corridor(environment.Environment):
    """A gymnax 1.x env: walk right to cell `length` (+1 there, -0.01 a step); truncated at the limit."""

    def __init__(self, length: int = 6) -> None:
        super().__init__()
        self.length = length

    @property
    def default_params(self) -> CorridorParams:
        return CorridorParams()

    def get_obs(self, state, params=None, key=None):
        return jnp.array([state.pos / self.length, state.time / 40.0], jnp.float32)

    def reset_env(self, key, params):
        state = CorridorState(pos=jnp.int32(0), time=0)
        return self.get_obs(state), state

    def step_env(self, key, state, action, params):
        pos = jnp.clip(state.pos + 2 * action - 1, 0, self.length)
        state = CorridorState(pos=pos, time=state.time + 1)
        terminated = pos == self.length
        return self.get_obs(state), state, jnp.where(terminated, 1.0, -0.01), terminated, {}

    def is_terminated(self, state, params):
        return state.pos == self.length

    def action_space(self, params=None):
        return spaces.Discrete(2)

    def observation_space(self, params):
        return spaces.Box(0.0, 1.0, (2,), jnp.float32)


class OldCorridor:
    """The same task with gymnax 0.0.x's API: `step` returns five values, `done` holding the time limit."""

    default_params = CorridorParams()

    def __init__(self, length: int = 6) -> None:
        self.length = length

    def reset(self, key, params):
        return jnp.zeros(2, jnp.float32), (jnp.int32(0), jnp.int32(0))

    def step(self, key, state, action, params):
        pos, t = jnp.clip(state[0] + 2 * action - 1, 0, self.length), state[1] + 1
        done = (pos == self.length) | (t >= params.max_steps_in_episode)
        obs = jnp.array([pos / self.length, t / 40.0], jnp.float32)
        return obs, (pos, t), jnp.where(pos == self.length, 1.0, -0.01), done, {}

    def action_space(self, params):
        return spaces.Discrete(2)

    def observation_space(self, params):
        return spaces.Box(0.0, 1.0, (2,), jnp.float32)


class Protocol:
    """purejaxppo's own protocol, with `obs`, `reward` and the state made wrong by the subclasses below."""

    observation_shape = (2,)
    action_space = ActionSpace.discrete_actions(2)

    def reset(self, key):
        return jnp.zeros(2), jnp.int32(0)

    def observe(self, t):
        return jnp.zeros(2) + t

    def step(self, key, state, action):
        t = state + 1
        return EnvStep(self.observe(t), t, self.reward(), t > 3, jnp.bool_(False), self.observe(t))

    def reward(self):
        return jnp.float32(1.0)


class WrongShape(Protocol):
    def observe(self, t):
        return jnp.zeros(3) + t


class VectorReward(Protocol):
    def reward(self):
        return jnp.ones(2)


class DriftingState(Protocol):
    def step(self, key, state, action):
        return super().step(key, state, action)._replace(state=jnp.float32(state))


class DictObs(Protocol):
    def observe(self, t):
        return {"t": t}


class Raising(Protocol):
    def step(self, key, state, action):
        raise IndexError("cell 9 is outside the corridor")


class UndeclaredMask(Protocol):
    """pgx-style: it knows its legal actions, but its space does not say they are masked."""

    def action_mask(self, state):
        return jnp.array([True, False])


class IntShape(Protocol):
    observation_shape = 2  # (2) where (2,) was meant


class BadImage(Protocol):
    image_shape = (2, 2, 1)


class NoActions(Protocol):
    action_space = ActionSpace.discrete_actions(0)


class EmptyComponent(Protocol):
    action_space = ActionSpace.multi_discrete([3, 0])


class CrossedBox(Protocol):
    action_space = ActionSpace.box(1.0, -1.0, (2,))

    def step(self, key, state, action):
        return super().step(key, state, 0)


class HostCallback(Protocol):
    """A reward computed on the host, which a single env traces but a vmapped batch does not."""

    def step(self, key, state, action):
        reward = jax.pure_callback(lambda t: np.float32(t > 2), jax.ShapeDtypeStruct((), jnp.float32), state)
        return super().step(key, state, action)._replace(reward=reward)


class Board(Protocol):
    """Observations of rank 3 (a 4 x 4 board of 3 planes), as pgx and board-game envs give them."""

    observation_shape = (4, 4, 3)

    def reset(self, key):
        return jnp.zeros((4, 4, 3)), jnp.int32(0)

    def observe(self, t):
        return jnp.zeros((4, 4, 3)).at[t % 4, 0, 0].set(1.0)


class Scalar(Protocol):
    observation_shape = ()

    def reset(self, key):
        return jnp.float32(0), jnp.int32(0)

    def observe(self, t):
        return t.astype(jnp.float32)


def failing_factory():
    raise ValueError("no corridor today")


class NotAnEnv:
    def reset(self, key):
        return None


INSTANCE = Corridor()
CONFIG = PPOConfig(num_envs=8, num_steps=16, total_timesteps=8 * 16 * 6, num_minibatches=2, update_epochs=2,
                   hidden_sizes=(16,), lr=3e-3, log_every=3, compilation_cache=CACHE)


def greedy_return(env, policy, steps: int = 40) -> float:
    """The deterministic policy's return in one episode of `env` (an adapted env)."""
    obs, state = env.reset(jax.random.key(0))
    total = 0.0
    for i in range(steps):
        out = env.step(jax.random.key(i), state, policy(obs))
        total += float(out.reward)
        if out.terminated or out.truncated:
            break
        obs, state = out.obs, out.state
    return total


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Corridor given as an object, trained through the host loop into a run dir."""
    run_dir = tmp_path_factory.mktemp("object") / "run"
    return train(CONFIG, run_dir, env=Corridor())


def test_a_gymnax_env_object_trains_and_its_run_records_the_class(trained):
    policy = load_policy(trained.run_dir, env=Corridor())
    assert greedy_return(make_env(Corridor()), policy) == pytest.approx(1 - 0.01 * 5)  # the shortest path
    assert load(trained.run_dir / "config.yaml").env == "object:test_custom_env.Corridor"


def test_an_object_run_loads_and_fine_tunes_without_its_env_and_resumes_with_it(trained, tmp_path):
    # the record's signature rebuilds the policy: no env is built, and the object is not needed again
    act, policy = load_policy(trained.run_dir), make_ppo(CONFIG, Corridor()).policy
    state = jax.tree.map(lambda x: x[0], trained.state)
    obs = jax.random.uniform(jax.random.key(1), (16, 2))
    np.testing.assert_array_equal(act(obs), policy.act(state.params, state.obs_stats, obs)[0])
    # a run on the same env named by import path starts from it, though the source's env cannot be built
    assert load(trained.run_dir / "config.yaml").env == "object:test_custom_env.Corridor"
    tuned = make_ppo(CONFIG.replace(env="test_custom_env:Corridor", init_from=str(trained.run_dir)))
    assert leaves_equal(with_pretrained(tuned).pretrained.params, state.params)
    # evaluating plays episodes, so it needs the env object again
    with pytest.raises(ConfigError, match=r"env object given from Python \(test_custom_env.Corridor\).*env=\.\.\."):
        evaluate_run(trained.run_dir, 2)
    source, returns, _ = evaluate_run(trained.run_dir, 2, env=Corridor())
    assert source.step == CONFIG.num_updates and np.all(returns > 0.9)

    cut = train(CONFIG, tmp_path / "cut", env=Corridor(), until_update=3)
    assert cut.stopped
    resumed = train(CONFIG, tmp_path / "cut", env=Corridor(), resume=True)
    assert leaves_equal(resumed.state.params, trained.state.params)


def test_a_record_of_a_version_before_signatures_reads_through_its_env_object_masked_once(tmp_path):
    config = CONFIG.replace(obs_mask=(1,), total_timesteps=8 * 16 * 2, log_every=2)
    made = train(config, tmp_path / "masked", env=Corridor())
    meta = checkpoint.checkpoint_dir(made.run_dir) / str(config.num_updates) / "meta" / "metadata"
    data = json.loads(meta.read_text())
    signature = Signature.from_json(data.pop("signature"))
    meta.write_text(json.dumps(data))
    assert signature.observation_shape == (1,) and read_trained(made.run_dir, env=Corridor()).signature == signature
    tuned = with_pretrained(make_ppo(config.replace(init_from=str(made.run_dir)), Corridor()))
    assert leaves_equal(tuned.pretrained.params, jax.tree.map(lambda x: x[0], made.state.params))


def test_make_train_takes_an_env_object(trained):
    _, metrics = jax.jit(make_train(CONFIG, env=Corridor()))(jax.random.key(CONFIG.seed))
    np.testing.assert_allclose(metrics["episode_return"], trained.metrics["episode_return"][0], rtol=1e-6)


def test_an_import_path_trains_from_a_yaml_through_the_cli_and_evaluates_loads_and_resumes(tmp_path):
    config = tmp_path / "corridor.yaml"
    config.write_text("env: test_custom_env:Corridor\nenv_kwargs: {length: 4}\nnum_envs: 8\nnum_steps: 16\n"
                      f"total_timesteps: {8 * 16 * 6}\nnum_minibatches: 2\nupdate_epochs: 2\nhidden_sizes: [16]\n"
                      f"lr: 0.003\nlog_every: 3\ncheckpoint_every: 3\ncompilation_cache: {CACHE}\n")
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    run_dir = tmp_path / "run"
    proc = cli("train", str(config), "--run-dir", str(run_dir), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training test_custom_env:Corridor" in proc.stdout
    evaluated = cli("eval", str(run_dir), "--episodes", "3", env=env)
    assert evaluated.returncode == 0 and re.search(r"return 0\.97", evaluated.stdout), evaluated.stdout  # 1 - 0.03

    policy = load_policy(run_dir)  # the import path rebuilds the env in this process too
    assert greedy_return(make_env("test_custom_env:Corridor", {"length": 4}), policy) == pytest.approx(0.97)
    cut = train(load(config), tmp_path / "cut", until_update=3)
    resumed = train(load(config), tmp_path / "cut", resume=True)
    straight = train(load(config), tmp_path / "straight")
    assert cut.stopped and leaves_equal(resumed.state.params, straight.state.params)


def test_an_old_five_value_env_adapts_trains_and_says_so_once(capsys):
    first, second = make_env(OldCorridor()), make_env(OldCorridor())
    assert first.old_api and second.old_api
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("purejaxppo: note:")]
    assert len(notes) == 1 and "five values" in notes[0] and "termination" in notes[0]
    out = first.step(jax.random.key(0), first.reset(jax.random.key(1))[1], 1)
    assert out.terminated.dtype == bool and not out.truncated
    state, _ = jax.jit(make_train(CONFIG, env=OldCorridor()))(jax.random.key(0))
    policy = LoadedPolicy(make_ppo(CONFIG, OldCorridor()).policy, state.params, state.obs_stats)
    assert greedy_return(first, policy) == pytest.approx(1 - 0.01 * 5)  # the shortest path


def test_env_kwargs_go_to_the_constructor_and_then_to_a_gymnax_envs_params():
    env = make_env("test_custom_env:Corridor", {"length": 3, "max_steps_in_episode": 7})
    assert env._env.length == 3 and env._params.max_steps_in_episode == 7


def test_brax_and_playground_env_objects_adapt_like_their_named_families():
    import brax.envs

    ours = make_env(brax.envs.get_environment("inverted_pendulum", backend="positional"))
    named = make_env("brax/inverted_pendulum")
    assert ours.observation_shape == named.observation_shape and ours.action_space.shape == named.action_space.shape
    with pytest.raises(ConfigError, match="is wrapped by AutoResetWrapper; give the env unwrapped"):
        make_env(brax.envs.create("inverted_pendulum", backend="positional"))  # its own time limit would count too
    if importlib.util.find_spec("mujoco_playground"):  # (the conformance test runs the named family)
        from mujoco_playground import dm_control_suite

        task = dm_control_suite.load("CartpoleBalance", config_overrides={"impl": "jax", "episode_length": 7})
        env = make_env(task)
        assert env.observation_shape == (5,) and env._env.episode_length == 7  # its own config's time limit


def test_time_limits_are_truncation_in_a_gymnax_object_and_termination_in_an_old_one():
    def flags(env):
        obs, state = env.reset(jax.random.key(0))
        for i in range(40):
            out = env.step(jax.random.key(i), state, 0)  # left: never reaches the end
            state = out.state
        return bool(out.terminated), bool(out.truncated)

    assert flags(make_env(Corridor())) == (False, True)
    assert flags(make_env(OldCorridor())) == (True, False)


BAD = [
    ("test_custom_env:Missing", {}, r"test_custom_env has no attribute 'Missing'"),
    ("no_such_module_xyz:Env", {}, r"cannot import no_such_module_xyz .*ModuleNotFoundError: No module named"),
    ("broken_env_module:Env", {}, r"cannot import broken_env_module .*RuntimeError: needs a robot"),
    ("not a path:", {}, r"is not an import path like 'package.module:EnvClass'"),
    ("test_custom_env:NotAnEnv", {}, r"fits none of the env kinds .*protocol \(missing step, observation_shape, "
                                     r"action_space as a purejaxppo.envs.ActionSpace\).*gymnax Environment \(missing "
                                     r"step, action_space, observation_space, default_params\)"),
    ("test_custom_env:WrongShape", {}, r"step's obs has shape \(3,\), but its observation_shape is \(2,\)"),
    ("test_custom_env:VectorReward", {}, r"step's reward has shape \(2,\); it must be a scalar"),
    ("test_custom_env:DriftingState", {}, r"step changes the state's value from int32\[\] to float32\[\]"),
    ("test_custom_env:DictObs", {}, r"step's obs is a dict, not an array"),
    ("test_custom_env:Raising", {}, r"Raising.step failed when traced: IndexError: cell 9 is outside the corridor"),
    ("test_custom_env:Corridor", {"width": 3}, r"env_kwargs.width: neither test_custom_env:Corridor's constructor "
                                               r"\(length\) nor its params \(max_steps_in_episode\) takes it"),
    ("test_custom_env:Corridor", {"max_steps_in_episode": 2.5}, r"max_steps_in_episode: expected an integer"),
    ("test_custom_env:failing_factory", {}, r"failing_factory\(\*\*env_kwargs\) with env_kwargs \{\} failed: "
                                            r"ValueError: no corridor today"),
    ("test_custom_env:INSTANCE", {"length": 3}, r"INSTANCE is an env object, not a class or factory, so it takes no"),
    ("object:my_module.MyEnv", {}, r"an env object given from Python \(my_module.MyEnv\), which a config cannot"),
    ("CartPoel-v1", {}, r"unknown environment 'CartPoel-v1'.*did you mean 'CartPole-v1'"),
    ("exiting_env_module:Env", {}, r"cannot import exiting_env_module for 'exiting_env_module:Env': SystemExit: 3$"),
    ("test_custom_env:UndeclaredMask", {}, r"UndeclaredMask has an action_mask method, but its action space is not "
                                           r"masked, so training would never see the mask; declare it: "
                                           r"ActionSpace.discrete_actions\(n, masked=True\)"),
    ("test_custom_env:IntShape", {}, r"IntShape.observation_shape must be a tuple of positive ints, like \(4,\) or "
                                     r"\(10, 10, 3\); got 2$"),
    ("test_custom_env:BadImage", {}, r"BadImage.image_shape \(2, 2, 1\) is not an \(H, W, C\) image of its "
                                     r"observation's 2 components"),
    ("test_custom_env:NoActions", {}, r"NoActions: its action space has 0 actions; it needs at least 1"),
    ("test_custom_env:EmptyComponent", {}, r"MultiDiscrete action space \[3, 0\] has a component with no choice"),
    ("test_custom_env:CrossedBox", {}, r"Box action space has low 1.0 and high -1.0 at component 0; each needs "
                                       r"low <= high"),
    ("test_custom_env:HostCallback", {}, r"HostCallback fails under jax.vmap, which training steps many envs with: "
                                         r"NotImplementedError: vmap is only supported for the pure_callback"),
]


@pytest.mark.parametrize("name, kwargs, message", BAD, ids=[b[0] for b in BAD])
def test_bad_envs_are_one_line_and_exit_2_before_compiling(name, kwargs, message, tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_env_module.py").write_text("raise RuntimeError('needs a robot')\n")
    (tmp_path / "exiting_env_module.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    args = ["train", "--set", f"env={name}", "--set", f"env_kwargs={kwargs}", "--run-dir", str(run_dir)]
    assert cli_lib.main(args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("purejaxppo: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert out == "" and not run_dir.exists()  # refused before the start line and before the run dir


def test_observations_of_any_rank_are_raveled_and_a_board_is_an_image_that_trains():
    board, scalar = make_env(Board()), make_env(Scalar())
    assert board.observation_shape == (48,) and board.image_shape == (4, 4, 3)
    assert scalar.observation_shape == (1,) and scalar.image_shape is None
    obs, state = board.reset(jax.random.key(0))
    out = board.step(jax.random.key(1), state, 1)
    np.testing.assert_array_equal(out.obs, jnp.zeros((4, 4, 3)).at[1, 0, 0].set(1.0).ravel())  # in C order
    config = CONFIG.replace(total_timesteps=8 * 16 * 2, torso="cnn", cnn_channels=(4,), cnn_kernels=(2,),
                            cnn_strides=(1,))
    state, metrics = jax.jit(make_train(config, env=Board()))(jax.random.key(0))
    assert np.isfinite(metrics["policy_loss"]).all() and metrics["policy_loss"].shape == (2,)


def test_a_bad_import_path_is_one_line_from_a_fresh_cli_process(tmp_path):
    line = one_error_line(cli("train", "--set", "env=test_custom_env:WrongShape", "--run-dir", str(tmp_path / "r"),
                              env={**os.environ, "PYTHONPATH": str(TESTS)}))
    assert "observation_shape is (2,)" in line


def test_the_current_directory_is_searched_for_an_import_path(tmp_path):
    # the installed console script, which (unlike `python -m`) does not put the current directory on sys.path
    (tmp_path / "walk_env.py").write_text("from test_custom_env import Corridor as Walk\n")
    script = Path(sys.executable).parent / "purejaxppo"
    proc = subprocess.run(
        [str(script), "train", "--set", "env=walk_env:Walk", "--set", "total_timesteps=64", "--set", "num_envs=4",
         "--set", "num_steps=16", "--set", "num_minibatches=2", "--set", "hidden_sizes=[8]",
         "--set", f"compilation_cache={CACHE}", "--run-dir", str(tmp_path / "run")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(TESTS)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load(tmp_path / "run" / "config.yaml").env == "walk_env:Walk"


def test_register_env_adds_a_name_that_trains_and_is_listed(monkeypatch, capsys):
    monkeypatch.setattr(envs, "_registered", {})
    register_env("Corridor-v0", Corridor)
    assert "Corridor-v0" in envs.known_envs()
    assert make_env("Corridor-v0", {"length": 3}).observation_shape == (2,)
    _, metrics = jax.jit(make_train(dataclasses.replace(CONFIG, env="Corridor-v0")))(jax.random.key(0))
    assert np.isfinite(np.asarray(metrics["episode_return"])).all()
    assert cli_lib.main(["envs"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert "Corridor-v0" in listed and "CartPole-v1" in listed
    for bad, factory, message in [("CartPole-v1", Corridor, "already an env"), ("my:env", Corridor, "import path"),
                                  ("Fine-v0", 3, "not callable"), ("", Corridor, "non-empty")]:
        with pytest.raises(ConfigError, match=message):
            register_env(bad, factory)


def test_packages_declare_envs_for_the_cli_through_entry_points(monkeypatch):
    point = importlib.metadata.EntryPoint(name="Corridor-ep", value="test_custom_env:Corridor",
                                          group=envs.ENTRY_POINT_GROUP)
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [point] if kw.get("group") == envs.ENTRY_POINT_GROUP else real(**kw))
    assert "Corridor-ep" in envs.known_envs()
    env = make_env("Corridor-ep", {"length": 2, "max_steps_in_episode": 5})  # as by import path: params too
    assert env.action_space.n == 2 and env._params.max_steps_in_episode == 5
