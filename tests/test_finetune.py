"""Fine-tuning (init_from) and the reference KL to a frozen reference policy (ref_kl_coef)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo import cli as cli_lib
from purejaxppo import train
from purejaxppo.errors import ConfigError
from purejaxppo.host import trained
from purejaxppo.host.loop import RunResult
from purejaxppo.program.chunk import init_program
from purejaxppo.program.hparams import HParams
from purejaxppo.program.ppo import abstract_states, make_ppo, make_train
from purejaxppo.sweep import sweep

from conftest import PENDULUM, TINY, TINY_FLAGS, leaves_equal, restored


@pytest.fixture(scope="module")
def referenced(straight, tmp_path_factory) -> RunResult:
    """TINY fine-tuned from `straight` with other hyperparameters and env_kwargs, referenced in the reward."""
    config = TINY.replace(init_from=str(straight.run_dir), lr=5e-3, ent_coef=0.0, ref_kl_coef=0.5,
                          env_kwargs={"max_steps_in_episode": 30})
    return train(config, tmp_path_factory.mktemp("referenced") / "run")


def test_a_fine_tuned_run_starts_from_its_source_and_acts_exactly_as_it(straight):
    config = TINY.replace(init_from=str(straight.run_dir), lr=1e-4, env_kwargs={"max_steps_in_episode": 50})
    ppo = trained.with_pretrained(make_ppo(config))
    source = trained.read_trained(straight.run_dir)
    params, obs_stats = source.params, source.obs_stats
    state = ppo.init(jax.random.key(11))
    assert leaves_equal(state.params, params) and leaves_equal(state.obs_stats, obs_stats)
    assert int(state.update_step) == 0 and int(state.opt_state[-1][0].count) == 0  # a fresh optimizer

    # the first update's rollout acts as the source: same actions for the same observations and keys
    _, traj = jax.jit(ppo.rollout)(state, jax.random.key(5))
    dist, _, _ = source.policy.apply(params, obs_stats, traj.obs)  # all steps at once: rounding may differ
    np.testing.assert_allclose(dist.log_prob(traj.action), traj.log_prob, rtol=1e-6, atol=1e-7)
    keys = jax.random.split(jax.random.key(3), TINY.num_envs)
    loaded = trained.load_policy(straight.run_dir)
    mine = jax.vmap(lambda o, k: ppo.policy.act(state.params, state.obs_stats, o, k)[0])(state.obs, keys)
    theirs = jnp.stack([loaded(o, k) for o, k in zip(state.obs, keys)])
    np.testing.assert_array_equal(mine, theirs)


def test_every_member_of_a_sweep_starts_from_the_same_checkpoint(straight):
    ppo = trained.with_pretrained(make_ppo(TINY.replace(init_from=str(straight.run_dir))))
    params = trained.read_trained(straight.run_dir).params
    hparams = jax.tree.map(lambda x: jnp.stack([x, x * 2, x * 3]), HParams.from_config(TINY))
    states = jax.jit(init_program(ppo, 3))(jnp.arange(3, dtype=jnp.uint32), hparams)
    for i in range(3):
        assert leaves_equal(jax.tree.map(lambda x: x[i], states.params), params)
    assert not leaves_equal(states.key[0], states.key[1])  # each its own envs and keys


def test_a_fine_tuned_run_has_its_own_history_and_keeps_its_reference_unchanged(straight, referenced):
    assert referenced.run_dir != straight.run_dir
    ref_kl = np.asarray(referenced.metrics["ref_kl"][0])
    assert ref_kl[0] == 0.0  # the first rollout acts with the reference itself
    assert np.all(np.isfinite(ref_kl)) and ref_kl[1:].mean() > 0  # k1: unbiased, though a single update's may dip
    source = trained.read_trained(straight.run_dir)
    params, obs_stats = source.params, source.obs_stats
    ref_params, ref_stats = jax.tree.map(lambda x: x[0], referenced.state.ref)
    assert leaves_equal(ref_params, params) and leaves_equal(ref_stats, obs_stats)  # never updated
    ppo = make_ppo(referenced.config)
    saved = restored(referenced.run_dir, abstract_states(ppo, 1), referenced.config.num_updates)
    assert leaves_equal(saved.ref, referenced.state.ref)  # saved with the checkpoints
    # the fine-tuned run trained: its own history, and its policy moved away from the source
    assert not leaves_equal(jax.tree.map(lambda x: x[0], referenced.state.params), params)


def test_a_resumed_run_with_a_reference_continues_bit_identically(referenced, tmp_path):
    run_dir = tmp_path / "run"
    train(referenced.config, run_dir, until_update=4)
    resumed = train(referenced.config, run_dir, resume=True)
    assert leaves_equal(resumed.state.params, referenced.state.params)
    assert leaves_equal(resumed.state.ref, referenced.state.ref)


def test_the_reference_kl_in_the_loss_is_logged_against_the_runs_own_first_policy():
    config = TINY.replace(ref_kl_coef=1.0, ref_kl_mode="loss", ref_kl_estimator="k3")
    ppo = make_ppo(config)
    state, metrics = jax.jit(make_train(config))(jax.random.key(0))
    first = ppo.init(jax.random.key(0))
    assert leaves_equal(state.ref, (first.params, first.obs_stats))  # without init_from: the run's own first policy
    ref_kl = np.asarray(metrics["ref_kl"])
    assert np.all(np.isfinite(ref_kl)) and np.all(ref_kl >= 0) and ref_kl[-1] > 0


@pytest.mark.parametrize("mode", ["reward", "loss"])
def test_a_stronger_reference_kl_keeps_the_policy_closer_in_one_compiled_sweep(straight, mode, tmp_path):
    config = TINY.replace(init_from=str(straight.run_dir), lr=2e-2, ent_coef=0.0, ref_kl_coef=0.01, ref_kl_mode=mode,
                          total_timesteps=TINY.batch_size * 12)
    result = sweep(config, seeds=2, grid={"ref_kl_coef": [0.01, 100.0]}, run_dir=tmp_path / "sweep")
    assert [r["ref_kl_coef"] for r in result.runs] == [0.01, 0.01, 100.0, 100.0]
    final = np.asarray(result.metrics["ref_kl"])[:, -4:].mean(axis=1)  # per run: weak, weak, strong, strong
    assert max(final[2:]) < min(final[:2]) / 5, final
    # a sweep's run dir holds several runs: a fine-tuning run names the one it starts from
    with pytest.raises(ConfigError, match=r"init_from: .*sweep holds 4 runs \(see its runs.csv\); choose one with init_run"):
        trained.with_pretrained(make_ppo(TINY.replace(init_from=str(tmp_path / "sweep"))))
    chosen = trained.with_pretrained(make_ppo(TINY.replace(init_from=str(tmp_path / "sweep"), init_run=2)))
    assert leaves_equal(chosen.pretrained.params, jax.tree.map(lambda x: x[2], result.state.params))


def test_the_cli_fine_tunes_and_a_resume_needs_no_source(straight, tmp_path, capsys):
    import shutil

    source = tmp_path / "source"
    shutil.copytree(straight.run_dir, source)
    run_dir = tmp_path / "tuned"
    flags = [*TINY_FLAGS, "--set", f"init_from={source}", "--set", "lr=1e-3", "--set", "ref_kl_coef=0.1",
             "--set", "lr_schedule=constant"]
    assert cli_lib.main(["train", "--run-dir", str(run_dir), *flags, "--set", "total_timesteps=256"]) == 0
    assert f"training CartPole-v1 from the policy in {source} for 256 env steps" in capsys.readouterr().out
    shutil.rmtree(source)  # the run's checkpoints hold all it needs, its reference included
    assert cli_lib.main(["train", "--resume", str(run_dir), "--set", "total_timesteps=512"]) == 0
    assert "resuming CartPole-v1 for 512 env steps" in capsys.readouterr().out


@pytest.mark.parametrize("changes, message", [
    ({"env": "Acrobot-v1"}, r"saw observations of shape \(4,\), Acrobot-v1 gives \(6,\)"),
    ({"hidden_sizes": "[32]"}, r"has hidden_sizes \(16,\), this config \(32,\)"),
    ({"activation": "relu"}, r"has activation 'tanh', this config 'relu'"),
    ({"env": "Pendulum-v1", "env_kwargs": "{}"}, r"acts with a categorical distribution, this config with a gaussian"),
    ({"normalize_obs": "false"}, r"has normalize_obs True, this config False"),
])
def test_a_source_that_does_not_fit_is_refused_in_one_line_before_compiling(straight, changes, message, tmp_path,
                                                                           capsys):
    pairs = [TINY_FLAGS[i + 1] for i in range(0, len(TINY_FLAGS), 2)]  # TINY's KEY=VALUE, less those changed
    flags = [f for p in pairs if p.split("=")[0] not in changes for f in ("--set", p)]
    for key, value in {"init_from": straight.run_dir, **changes}.items():
        flags += ["--set", f"{key}={value}"]
    run_dir = tmp_path / "run"
    assert cli_lib.main(["train", "--run-dir", str(run_dir), *flags]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("purejaxppo: error: init_from: "), err
    assert re.search(message, lines[0]), lines[0]
    assert out == "" and not run_dir.exists()


def test_a_source_with_other_action_bounds_is_refused(tmp_path):
    train(PENDULUM, tmp_path / "pendulum")
    config = PENDULUM.replace(init_from=str(tmp_path / "pendulum"), env_kwargs={"max_torque": 1.0,
                                                                              "max_steps_in_episode": 16})
    with pytest.raises(ConfigError, match=r"acted within the bounds \[-2.0\] to \[2.0\], Pendulum-v1 has \[-1.0\] to "
                                          r"\[1.0\]: the same params would act otherwise"):
        trained.with_pretrained(make_ppo(config))


def test_bad_init_from_keys_are_one_line(tmp_path, capsys):
    cases = [
        (["--set", f"init_from={tmp_path / 'nowhere'}"], r"init_from: run dir .*nowhere does not exist"),
        (["--set", "init_step=3"], r"init_step: has no effect without init_from"),
        (["--set", "memory=gru", "--set", "ref_kl_coef=0.1"], r"ref_kl_coef: the reference KL is not yet built for "
                                                             r"recurrent policies"),
    ]
    for flags, message in cases:
        assert cli_lib.main(["train", "--run-dir", str(tmp_path / "run"), *TINY_FLAGS, *flags]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and re.search(message, lines[0]), lines


def test_make_train_refuses_init_from_rather_than_start_fresh(straight):
    with pytest.raises(ConfigError, match="init_from: make_train builds a fresh init"):
        make_train(TINY.replace(init_from=str(straight.run_dir)))
