"""Population-based training: exploit and explore as pure functions with fixed scores; the in-program step
on real states (a diverged member replaced, never copied); a population of one and an interval past the
run equal plain training; resume bit-identical with its lineage; 4 devices equal 1; the CLI and its
refusals; the best member loaded by default."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo import load_policy, prepare, train
from purejaxppo.config import PPOConfig
from purejaxppo.errors import ConfigError
from purejaxppo.host.population import Population
from purejaxppo.host.trained import read_trained
from purejaxppo.pbt import Exploit, Explored, PBTConfig, lineage_rows, parse_explore, pbt
from purejaxppo.program import exploit
from purejaxppo.program.chunk import init_program
from purejaxppo.program.ppo import make_ppo

from conftest import CACHE, cli, here, leaves_equal, one_error_line

CONFIG = PPOConfig(num_envs=4, num_steps=16, total_timesteps=4 * 16 * 12, num_minibatches=2, update_epochs=2,
                   hidden_sizes=(16,), env_kwargs={"max_steps_in_episode": 20}, compilation_cache=CACHE)
SPEC = PBTConfig(4, parse_explore("lr,ent_coef=0.001:0.05", CONFIG), interval=3, seeds=2)


# --- exploit and explore, pure ---

def test_exploit_replaces_the_bottom_by_the_top():
    scores = jnp.array([5.0, 1.0, 9.0, 3.0, 7.0, 0.0, 8.0, 2.0])  # bottom quarter: 5 (0.0), 1 (1.0)
    parents = np.stack([exploit.exploit(scores, jnp.zeros(8, bool), jax.random.key(i), 0.25) for i in range(200)])
    replaced = parents != np.arange(8)
    assert replaced[:, [5, 1]].all() and not replaced[:, [0, 2, 3, 4, 6, 7]].any()
    assert set(parents[:, [5, 1]].ravel()) == {2, 6}  # the top quarter: 9.0 and 8.0, both drawn


def test_exploit_replaces_diverged_members_never_copies_them_and_leaves_unknown_ones():
    scores = jnp.array([9.0, 1.0, jnp.nan, 3.0, 7.0, 5.0])
    diverged = jnp.array([True, False, False, False, False, False])  # the best score, but diverged
    for i in range(100):
        parents = np.asarray(exploit.exploit(scores, diverged, jax.random.key(i), 0.25))
        assert parents[0] != 0 and 0 not in parents  # replaced, and never a parent
        assert parents[2] == 2 and 2 not in np.delete(parents, 2)  # unknown: neither replaced nor copied
        assert parents[1] == 4  # the bottom of the healthy known (1 of 4): replaced by the top (7.0)
        assert (parents[[3, 4, 5]] == [3, 4, 5]).all()


def test_exploit_edge_cases():
    key = jax.random.key(0)
    assert exploit.cut(1, 0.25) == 0 and exploit.cut(2, 0.25) == 1 and exploit.cut(8, 0.5) == 4
    np.testing.assert_array_equal(exploit.exploit(jnp.array([1.0]), jnp.array([False]), key, 0.25), [0])
    np.testing.assert_array_equal(exploit.exploit(jnp.array([1.0, 2.0]), jnp.zeros(2, bool), key, 0.25), [1, 1])
    nothing_known = exploit.exploit(jnp.full(4, jnp.nan), jnp.array([True, False, False, False]), key, 0.25)
    np.testing.assert_array_equal(nothing_known, np.arange(4))  # nobody to copy from
    one_known = exploit.exploit(jnp.array([jnp.nan, 2.0, jnp.nan]), jnp.array([True, False, False]), key, 0.25)
    np.testing.assert_array_equal(one_known, [1, 1, 2])


def test_explore_perturbs_within_the_factors_or_resamples_and_clips():
    values = jnp.array([[1e-3, 0.01], [1e-3, 0.01], [1e-3, 0.049]])
    replaced = jnp.array([True, False, True])
    low, high, log_scale = jnp.array([1e-4, 0.001]), jnp.array([1e-2, 0.05]), jnp.array([True, True])
    factors = jnp.array([0.8, 1.25])
    for i in range(50):
        new = np.asarray(exploit.explore(values, replaced, jax.random.key(i), factors, 0.0, low, high, log_scale))
        np.testing.assert_array_equal(new[1], values[1])  # not replaced: untouched
        for row in (0, 2):
            expected = np.clip(np.asarray(values[row])[None] * np.array([[0.8], [1.25]]), low, high)
            assert all(np.isclose(new[row, j], expected[:, j]).any() for j in range(2))
        assert new[2, 1] in (np.float32(0.049 * 0.8), np.float32(0.05))  # 0.049 x 1.25 clipped to 0.05
        fresh = np.asarray(exploit.explore(values, replaced, jax.random.key(i), factors, 1.0, low, high, log_scale))
        assert ((fresh[[0, 2]] >= low) & (fresh[[0, 2]] <= high)).all()
    draws = np.asarray(exploit.sample(jax.random.key(0), (4000, 1), low[:1], high[:1], log_scale[:1]))
    assert abs(np.median(np.log10(draws)) - (-3)) < 0.1  # log-uniform on [1e-4, 1e-2]: median 1e-3


def test_scores_and_best_members():
    returns = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan], [5.0, 5.0, 5.0], [0.0, 9.0, np.nan]])
    np.testing.assert_allclose(exploit.interval_scores(jnp.asarray(returns)), [2.0, np.nan, 5.0, 4.5])
    assert exploit.best_members({"episode_return": returns}, population=2, seeds=2, window=3) == [0, 2]
    assert exploit.best_members({"episode_return": returns}, population=2, seeds=2, window=1) == [0, 2]
    losses = np.zeros((4, 3))
    losses[2, 2] = np.nan  # member 2 diverged in the window: never the best
    assert exploit.best_members({"episode_return": returns, "policy_loss": losses}, 2, 2, 3) == [0, 3]
    assert exploit.best_members({"episode_return": returns, "policy_loss": losses}, 2, 2, 1) == [0, 3]


def test_bad_setups_are_refused():
    with pytest.raises(ConfigError, match="unknown hyperparameter to explore"):
        parse_explore("lr,num_envs", CONFIG)
    with pytest.raises(ConfigError, match="needs a range"):
        parse_explore("ent_coef", CONFIG.replace(ent_coef=0.0))
    with pytest.raises(ConfigError, match="LOW < HIGH"):
        parse_explore("lr=1e-2:1e-4", CONFIG)
    with pytest.raises(ConfigError, match="clip_eps"):
        parse_explore("clip_eps=-1:0.3", CONFIG)
    with pytest.raises(ConfigError, match="kl_coef cannot be explored"):
        parse_explore("kl_coef=0.1:1", CONFIG.replace(kl_coef=0.5))
    with pytest.raises(ConfigError, match="target_kl: it is off"):
        parse_explore("target_kl=0.01:0.05", CONFIG)
    with pytest.raises(ConfigError, match="lr_end: has no effect"):
        parse_explore("lr_end=0:1e-4", CONFIG.replace(lr_schedule="constant"))
    with pytest.raises(ConfigError, match="explore: name at least one"):  # from Python, before anything compiles
        pbt(CONFIG, dataclasses.replace(SPEC, explore=()))
    with pytest.raises(ConfigError, match="num_envs"):
        pbt(CONFIG, dataclasses.replace(SPEC, explore=(Explored("num_envs", 1, 8),)))
    with pytest.raises(ConfigError, match="checkpoint_every: 5 is not a multiple of interval = 3"):
        pbt(CONFIG.replace(checkpoint_every=5), SPEC)
    with pytest.raises(ConfigError, match="quantile"):
        pbt(CONFIG, dataclasses.replace(SPEC, quantile=0.7))


# --- the in-program step on real states ---

def test_the_step_replaces_a_diverged_member_and_copies_the_learner_not_the_envs():
    config = CONFIG.replace(log_every=SPEC.interval)
    spec = dataclasses.replace(SPEC, seeds=1)
    ppo = make_ppo(config)
    seeds = np.arange(4, dtype=np.uint32)
    hparams = jax.tree.map(lambda x: jnp.full(4, x), ppo.init(jax.random.key(0)).hparams)
    states = init_program(ppo, 4)(seeds, hparams)
    states = states.replace(params=jax.tree.map(lambda x: x.at[0].set(jnp.nan), states.params))  # member 0 diverged
    returns = jnp.array([[50.0] * 3, [10.0] * 3, [30.0] * 3, [40.0] * 3])  # 0 would be the best
    metrics = {"episode_return": returns, "policy_loss": jnp.zeros((4, 3))}
    # the chunk's own check of each run's params, as population.chunk_program hands it over
    finite = jnp.stack([jnp.isfinite(x).reshape(4, -1).all(axis=1) for x in jax.tree.leaves(states.params)]).all(0)
    step = jax.jit(lambda s, m: Exploit(spec, (0,))(ppo, s, m, finite, 0, 3))
    new, extra = step(states, metrics)
    parents = np.asarray(extra["pbt_parent"][:, -1]).astype(int)
    assert parents[0] in (2, 3) and parents[1] == 3 and parents[2] == 2 and parents[3] == 3
    for k, p in enumerate(parents):
        assert leaves_equal(jax.tree.map(lambda x: x[k], new.params), jax.tree.map(lambda x: x[p], states.params))
        assert leaves_equal(jax.tree.map(lambda x: x[k], new.env_state), jax.tree.map(lambda x: x[k], states.env_state))
        assert np.array_equal(jax.random.key_data(new.key[k]), jax.random.key_data(states.key[k]))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(new.params))
    lr = np.asarray(new.hparams.lr)
    assert lr[3] == hparams.lr[3] and lr[2] == hparams.lr[2]  # kept
    lr_range = next(e for e in spec.explore if e.name == "lr")
    assert lr_range.low <= lr[1] <= lr_range.high and lr[1] != hparams.lr[3]  # perturbed or drawn afresh
    not_due = jax.jit(lambda s, m: Exploit(spec, (0,))(ppo, s, m, finite, 0, 2))(states, metrics)[1]
    assert np.isnan(np.asarray(not_due["pbt_parent"])).all()  # a short chunk is not a PBT step


# --- whole runs ---

def test_a_population_of_one_and_an_interval_past_the_run_equal_plain_training():
    one = pbt(CONFIG, dataclasses.replace(SPEC, population=1, seeds=1))
    plain = train(CONFIG)
    assert leaves_equal(one.state.params, plain.state.params)

    # the same members as a plain population (a sweep's program: vmapped runs round in the last bit otherwise
    # than one run alone, see README "How far equal runs stay equal")
    never = pbt(CONFIG, dataclasses.replace(SPEC, population=2, seeds=1, interval=CONFIG.num_updates + 1))
    plain = prepare(Population(CONFIG, never.population.members)).run()
    assert leaves_equal(never.state, plain.state)
    assert [m.values["lr"] for m in never.population.members] == list(np.asarray(plain.state.hparams.lr))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return pbt(CONFIG, SPEC, tmp_path_factory.mktemp("pbt") / "straight")


def test_populations_stay_apart_and_the_outputs_are_written(straight):
    rows = lineage_rows(straight)
    steps = sorted({r["update"] for r in rows})
    assert steps == [0, 3, 6, 9, 12]
    for r in rows:
        assert r["parent"] // SPEC.population == r["member"] // SPEC.population  # within its own population
    assert any(r["parent"] != r["member"] for r in rows)
    assert (straight.run_dir / "lineage.csv").read_text().count("\n") == len(rows) + 1
    assert (straight.run_dir / "pbt.png").stat().st_size > 10_000
    for name in ("lr", "ent_coef"):
        e = next(x for x in SPEC.explore if x.name == name)
        assert all(e.low <= r[name] <= e.high for r in rows)


def test_resume_mid_run_is_bit_identical_lineage_included(straight, tmp_path):
    cut = pbt(CONFIG, SPEC, tmp_path / "cut", until_update=6)
    assert cut.stopped and not (tmp_path / "cut" / "lineage.csv").exists()
    resumed = pbt(CONFIG, SPEC, tmp_path / "cut", resume=True)
    assert leaves_equal(resumed.state, straight.state)
    for name in ("lineage.csv", "metrics.csv", "runs.csv"):  # two chunks of 8 members before the resume
        assert (tmp_path / "cut" / name).read_text() == (straight.run_dir / name).read_text(), name


def test_a_longer_resume_from_between_two_pbt_steps_is_refused(tmp_path):
    # the eval-return test's run and program (constant schedules: a run that may be made longer): 7 updates, PBT
    # steps every 3, so its last checkpoint, at 7, lies between two of them
    config = CONFIG.replace(lr_schedule="constant", eval_episodes=2, total_timesteps=4 * 16 * 7)
    spec = dataclasses.replace(SPEC, seeds=1, score="eval_return")
    pbt(config, spec, tmp_path / "run")
    with pytest.raises(ConfigError, match="between two PBT steps .* resume from a checkpoint at a multiple of 3"):
        pbt(config.replace(total_timesteps=config.total_timesteps * 2), spec, tmp_path / "run", resume=True)


def test_the_best_member_is_what_load_policy_gives_by_default(straight):
    best = straight.best()
    assert best[1] >= SPEC.population  # the second population's best is among its own members
    params = read_trained(straight.run_dir).params
    assert leaves_equal(params, jax.tree.map(lambda x: x[best[0]], straight.state.params))
    other = (best[0] + 1) % SPEC.population
    params = read_trained(straight.run_dir, run=other).params
    assert leaves_equal(params, jax.tree.map(lambda x: x[other], straight.state.params))
    assert load_policy(straight.run_dir)(np.zeros(4, np.float32)).shape == ()


def test_four_devices_equal_one_through_the_cli(straight, tmp_path):
    proc = cli("pbt", "--population", "4", "--seeds", "2", "--explore", "lr,ent_coef=0.001:0.05", "--interval", "3",
               "--set", "num_envs=4", "--set", "num_steps=16", "--set", f"total_timesteps={4 * 16 * 12}",
               "--set", "num_minibatches=2", "--set", "update_epochs=2", "--set", "hidden_sizes=[16]",
               "--set", "env_kwargs={max_steps_in_episode: 20}", "--set", f"compilation_cache={CACHE}",
               "--cpu-devices", "4", "--run-dir", str(tmp_path / "four"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "8 run(s) on 4 cpu device(s)" in proc.stdout and "best member" in proc.stdout
    assert (tmp_path / "four" / "lineage.csv").read_text() == (straight.run_dir / "lineage.csv").read_text()
    evaluated = here("eval", str(tmp_path / "four"), "--episodes", "2")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (["--explore", "lr,gamma=0.9:1.5"], "gamma"),
    (["--explore", "num_envs"], "unknown hyperparameter to explore"),
    ([], "--explore: name the hyperparameters"),
    (["--explore", "lr", "--perturb", "0.8,x"], "--perturb"),
    (["--explore", "lr", "--quantile", "0.9"], "quantile"),
    (["--explore", "lr", "--set", "eval_every=4"], "eval_every: 4 is not a multiple of interval = 10"),
])
def test_cli_refusals_are_one_line(args, message, tmp_path):
    line = one_error_line(here("pbt", *args, "--run-dir", str(tmp_path / "r")))
    assert message in line and not (tmp_path / "r").exists()


def test_a_recurrent_policy_on_an_env_object_explores_too():
    from test_custom_env import Corridor

    config = CONFIG.replace(memory="gru", memory_size=8, total_timesteps=4 * 16 * 6, env_kwargs={})
    spec = PBTConfig(2, parse_explore("lr,clip_eps", config), interval=3)
    result = pbt(config, spec, env=Corridor())
    parents = result.metrics["pbt_parent"][:, [2, 5]]
    assert all(p[0] == p[1] for p in parents.T)  # of two members, the better one is copied into the other
    assert result.config.env == "object:test_custom_env.Corridor"
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(result.state.params))


def test_eval_return_scores_and_a_new_lr_applies_at_the_next_update():
    config = CONFIG.replace(lr_schedule="constant", eval_episodes=2, total_timesteps=4 * 16 * 7)
    result = pbt(config, dataclasses.replace(SPEC, seeds=1, score="eval_return"))
    m = result.metrics
    steps = np.flatnonzero(np.isfinite(m["pbt_parent"][0]))
    assert list(steps) == [2, 5] and np.isfinite(m["pbt_score"][:, steps]).all()
    for j in steps:  # the LR is read from the state at every update: the copied and explored one, at once
        np.testing.assert_array_equal(m["lr"][:, j + 1], m["pbt_lr"][:, j])
    assert (m["pbt_parent"][:, steps] != np.arange(4)[:, None]).any()
