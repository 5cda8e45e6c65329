"""Hyperparameter search: ASHA's rungs and promotions as pure functions with fixed scores; the search's
judging on hand-made chunks (diverged trials, the last rung, refills, the keeper); a refilled slot trains
as a fresh run of its trial, bit for bit; the outputs; a stopped search resumes to the same files; the CLI
and its refusals; the best trial loaded by default."""

from __future__ import annotations

import csv
import dataclasses
import filecmp

import jax
import numpy as np
import pytest

from purejaxppo import Member, Population, load_policy, prepare, train
from purejaxppo import config as config_lib
from purejaxppo.config import PPOConfig
from purejaxppo.errors import ConfigError
from purejaxppo.host import asha
from purejaxppo.host import metrics as metrics_lib
from purejaxppo.host.samplers import sample
from purejaxppo.host.search import Search, Space, TuneConfig
from purejaxppo.host.trained import read_trained
from purejaxppo.tune import check, parse_space, tune

from conftest import CACHE, TINY_FLAGS, cli, here, leaves_equal, one_error_line

# 27 updates a trial, in chunks of 3; rungs at 3 and 9 updates
CONFIG = PPOConfig(num_envs=4, num_steps=16, total_timesteps=4 * 16 * 27, num_minibatches=2, update_epochs=2,
                   hidden_sizes=(16,), normalize_obs=True, env_kwargs={"max_steps_in_episode": 20},
                   compilation_cache=CACHE)
SPACES = (Space("lr", "log", 1e-4, 1e-2), Space("ent_coef", "choice", values=(0.0, 0.01)))
SPEC = TuneConfig(SPACES, trials=8, slots=3, interval=3, min_updates=3)


# --- ASHA, pure ---

def test_rungs_grow_by_eta_below_the_full_budget():
    assert asha.rungs(3, 27, 3) == (3, 9)
    assert asha.rungs(4, 97, 3) == (4, 12, 36)
    assert asha.rungs(5, 5, 2) == ()


def test_a_rung_keeps_its_top_third_of_all_it_recorded():
    # 6 recorded: the top 2 go on. Of the three arriving, 8.0 ranks 2nd (behind 9.0) and goes on; 4.0 and 1.0 stop
    go_on = asha.promoted(np.array([9.0, 2.0, 3.0]), np.array([8.0, 4.0, 1.0]), 3)
    assert go_on.tolist() == [True, False, False]
    # an early arrival is judged against fewer: alone, it goes on; with two before it, the best of the three goes on
    assert asha.promoted(np.array([]), np.array([0.5]), 3).tolist() == [True]
    assert asha.promoted(np.array([1.0, 2.0]), np.array([1.5]), 3).tolist() == [False]
    assert asha.promoted(np.array([1.0, 2.0]), np.array([2.5]), 3).tolist() == [True]


def test_ties_go_to_the_earlier_score_and_unknown_scores_rank_last():
    assert asha.promoted(np.array([5.0, 1.0, 0.0]), np.array([5.0]), 3).tolist() == [False]  # 5.0 recorded first
    assert asha.promoted(np.array([]), np.array([3.0, 3.0, 3.0]), 3).tolist() == [True, False, False]
    assert asha.promoted(np.array([np.nan, 1.0]), np.array([np.nan]), 3).tolist() == [False]
    assert asha.promoted(np.array([]), np.array([np.nan, -1.0, np.nan]), 3).tolist() == [False, True, False]


def test_random_draws_depend_on_the_seed_and_trial_only():
    space = Space("x", "uniform", 2.0, 3.0)
    draws = [sample([space, Space("y", "log", 1e-3, 1e-1), Space("z", "choice", values=(1.0, 2.0))], 5, t)
             for t in range(200)]
    assert draws[7] == sample([space, Space("y", "log", 1e-3, 1e-1), Space("z", "choice", values=(1.0, 2.0))], 5, 7)
    assert draws[7] != sample([space, Space("y", "log", 1e-3, 1e-1), Space("z", "choice", values=(1.0, 2.0))], 6, 7)
    x, y = np.array([d["x"] for d in draws]), np.array([d["y"] for d in draws])
    assert 2.0 <= x.min() and x.max() < 3.0 and 1e-3 <= y.min() and y.max() < 1e-1
    assert (np.log10(y) < -2).mean() == pytest.approx(0.5, abs=0.15)  # uniform in log space: half below 1e-2
    assert {d["z"] for d in draws} == {1.0, 2.0}


# --- the search's judging, on hand-made chunks ---

def chunk(returns: list[float], *, diverged: int | None = None, updates: int = 3):
    """One chunk's metrics for 3 slots and the keeper: slot k's return each update is returns[k]."""
    rows = np.array([*returns, 0.0], np.float32)[:, None].repeat(updates, axis=1)
    loss = np.zeros_like(rows)
    if diverged is not None:
        loss[diverged, -1] = np.nan
    return {"episode_return": rows, "policy_loss": loss}, np.ones(4, bool)


def test_the_search_stops_refills_keeps_and_never_promotes_a_diverged_trial():
    search = Search(dataclasses.replace(SPEC, trials=6), seed=10, max_updates=27)
    assert [t.seed for t in search.trials] == [10, 11, 12] and search.rungs == (3, 9)
    keep, refills = search.judge(3, 3, *chunk([1.0, 5.0, 3.0], diverged=1))
    # at the first rung: 1 diverged (not ranked); of 1.0 and 3.0 the top third (1 of 2) goes on
    assert [t.status for t in search.trials[:3]] == ["stopped", "diverged", "promoted"]
    assert keep is None and sorted(refills) == [0, 1] and [refills[0].id, refills[1].id] == [3, 4]
    assert refills[0].start == 3 and refills[0].seed == 13
    keep, refills = search.judge(6, 3, *chunk([4.0, 0.5, 0.0]))
    # trials 3 and 4 reach the first rung; 4 scores recorded there (1.0, 3.0, 4.0, 0.5): 1 goes on: 4.0
    assert [t.status for t in search.trials[3:5]] == ["promoted", "stopped"] and list(refills) == [1]
    search.judge(9, 3, *chunk([4.0, 0.0, 7.0]))
    # trial 2 reached rung 2 (9 updates) with 7.0 over its last 3 updates, alone there: it goes on; trial 5
    # stopped at the first rung (0.0 of 5), and no trial is left to refill its slot
    assert search.trials[2].status == "promoted" and search.trials[2].scores == [3.0, 7.0]
    assert search.trials[5].status == "stopped" and 1 not in search.running()
    search.judge(12, 3, *chunk([4.0, 0.0, 7.0]))
    assert search.trials[3].status == "stopped" and search.trials[3].scores == [4.0, 4.0]  # 2 at rung 2: 7.0 won
    while not search.done:
        keep, refills = search.judge(99, 3, *chunk([0.0, 0.0, 8.0]))
    assert search.trials[2].status == "finished" and search.trials[2].scores == [3.0, 7.0, 8.0]
    assert search.trials[2].updates == 27 and keep == 2 and search.kept == 2 and search.best().id == 2
    assert [t.status for t in search.trials] == ["stopped", "diverged", "finished", "stopped", "stopped", "stopped"]


def test_the_keeper_takes_each_better_finished_trial():
    search = Search(dataclasses.replace(SPEC, trials=4, scheduler="none", min_updates=6), seed=0, max_updates=6)
    search.judge(3, 3, *chunk([1.0, 2.0, 3.0]))
    keep, refills = search.judge(6, 3, *chunk([5.0, 6.0, 4.0]))  # trial 1 ends best
    assert keep == 1 and search.kept == 1 and list(refills) == [0] and refills[0].id == 3
    assert [t.scores for t in search.trials[:3]] == [[3.0], [4.0], [3.5]]  # means over the 6-update window
    search.judge(9, 3, *chunk([9.0, 0.0, 0.0]))
    keep, _ = search.judge(12, 3, *chunk([9.0, 0.0, 0.0]))
    assert keep == 0 and search.kept == 3 and search.done


# --- setup refusals, before anything compiles ---

@pytest.mark.parametrize("text, message", [
    ("lr=log:0:1e-2", "a log range needs LOW > 0"),
    ("lr=1e-2:1e-4", "must have LOW < HIGH"),
    ("ent_coef=0,0.01,0", "a choice lists each value once"),
    ("num_envs=4,8", "cannot be swept in one compiled call"),
    ("lr", "a space is KEY=LOW:HIGH"),
    ("lr=a:b", "with numbers"),
    ("gamma=0.9:1.5", "gamma"),
])
def test_a_bad_space_is_refused_in_one_line(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(text, CONFIG)


@pytest.mark.parametrize("changes, message", [
    ({"slots": 9}, "use at most 8"),
    ({"interval": 4}, "not a multiple of --interval 4"),
    ({"min_updates": 27}, "must come before a trial's end"),
    ({"min_updates": 4}, "not a multiple of --interval 3"),
    ({"eta": 1}, "reduction factor"),
    ({"spaces": (SPACES[0], SPACES[0])}, "lr is given twice"),
    ({"spaces": ()}, "name at least one"),
])
def test_a_search_that_cannot_work_is_refused_in_one_line(changes, message):
    with pytest.raises(ConfigError, match=message):
        check(dataclasses.replace(SPEC, **changes), CONFIG)


def test_the_chunk_and_first_rung_are_chosen_when_left_open():
    spec, config = check(TuneConfig(SPACES, 8, 2), CONFIG.replace(total_timesteps=1024 * 488, num_envs=64))
    assert (spec.interval, spec.min_updates, config.log_every) == (8, 16, 8)
    assert Search(spec, 0, 488).rungs == (16, 48, 144, 432)


# --- a search end to end ---

@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return tune(CONFIG, SPEC, tmp_path_factory.mktemp("tune") / "run")


def test_every_trial_ran_and_the_outputs_say_how(straight):
    with (straight.run_dir / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == list(range(8))
    assert all(r["status"] in ("stopped", "finished", "diverged") for r in rows)
    finished = [r for r in rows if r["status"] == "finished"]
    assert finished and all(int(r["updates"]) == 27 for r in finished)
    for r in rows:  # a stopped trial has scores up to the rung it stopped at, and none after
        scores = [float(r[f"score_{u * CONFIG.batch_size}"]) for u in (3, 9, 27)]
        reached = {3: 1, 9: 2, 27: 3}[int(r["updates"])]
        assert np.isfinite(scores[:reached]).all() and np.isnan(scores[reached:]).all()
    data = metrics_lib.read(straight.run_dir / "metrics.csv")
    trial = data["trial"]
    for t in straight.search.trials:  # metrics.csv's trial column shows each trial in its slot for its updates
        assert (trial[t.slot, t.start:t.start + t.updates] == t.id).all()
    best = straight.best()
    assert best.status == "finished" and best.scores[-1] == max(t.scores[-1] for t in straight.search.trials
                                                                 if t.status == "finished")
    saved = config_lib.load(straight.run_dir / "best.yaml")
    assert saved == CONFIG.replace(seed=best.seed, log_every=3, **best.values)
    assert (straight.run_dir / "tune.png").stat().st_size > 0


def fresh(trial, updates: int | None = None):
    """`trial` trained from its start as run 0 of a population shaped as the search's (3 slots and the keeper),
    so in the same compiled program; the other runs are other seeds."""
    members = (Member(trial.seed, trial.values), *(Member(100 + k) for k in range(3)))
    return prepare(Population(CONFIG.replace(log_every=3), members)).run(until_update=updates, guard=False)


def test_a_refilled_slot_trains_as_a_fresh_run_of_its_trial(straight):
    refilled = [t for t in straight.search.trials if t.start > 0]
    assert refilled
    t = max(refilled, key=lambda t: t.updates)
    same, single = fresh(t, t.updates), train(CONFIG.replace(seed=t.seed, log_every=3, **t.values),
                                              until_update=t.updates)
    for name in ("episode_return", "policy_loss", "value_loss", "grad_norm", "lr"):
        tuned = straight.metrics[name][t.slot, t.start:t.start + t.updates]
        np.testing.assert_array_equal(tuned, same.metrics[name][0, :t.updates], err_msg=name)
        # the single run's own program (not vmapped) sums in another order: the last bit may differ
        np.testing.assert_allclose(tuned, single.metrics[name][0, :t.updates], rtol=1e-6, atol=1e-9, err_msg=name)


def test_the_best_trial_is_what_load_policy_gives(straight):
    again = fresh(straight.best())
    assert leaves_equal(read_trained(straight.run_dir).params, jax.tree.map(lambda x: x[0], again.state.params))
    assert load_policy(straight.run_dir)(np.zeros(4, np.float32)).shape == ()


def test_a_stopped_search_resumes_to_the_same_files(straight, tmp_path):
    run_dir = tmp_path / "run"
    first = tune(CONFIG, SPEC, run_dir, until_update=7)
    assert first.stopped and first.update == 9 and (run_dir / "trials.csv").is_file()
    assert not (run_dir / "best.yaml").exists()
    tune(CONFIG, None, run_dir, resume=True)
    for name in ("trials.csv", "metrics.csv", "best.yaml", "runs.csv"):
        assert filecmp.cmp(straight.run_dir / name, run_dir / name, shallow=False), name


# --- the CLI ---

def test_the_cli_searches_on_two_devices_as_on_one_and_eval_takes_the_best_trial(straight, tmp_path):
    run_dir = tmp_path / "run"
    search = ["--space", "lr=log:1e-4:1e-2", "--space", "ent_coef=0,0.01", "--trials", "8", "--slots", "3",
              "--interval", "3", "--min-budget", "192", *TINY_FLAGS, "--set", "total_timesteps=1728"]
    planned = here("check", *search)
    assert planned.returncode == 0, planned.stderr
    assert "search    8 trials in 3 slots and a keeper run, ASHA, eta 3, rungs at 3, 9 updates" in planned.stdout
    proc = cli("tune", *search, "--cpu-devices", "2", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 run(s) on 2 cpu device(s)" in proc.stdout and "best trial" in proc.stdout
    for name in ("trials.csv", "best.yaml"):  # the runs axis split over devices: each run computes as on one
        assert (run_dir / name).read_text() == (straight.run_dir / name).read_text(), name
    proc = here("eval", str(run_dir), "--episodes", "2")
    assert proc.returncode == 0 and "2 deterministic episodes" in proc.stdout
    proc = here("check", "--resume", str(run_dir))
    assert proc.returncode == 0 and "8 started, 8 ended" in proc.stdout


@pytest.mark.parametrize("args, message", [
    ((), "--space: name the hyperparameters to tune"),
    (("--space", "lr=log:0:1"), "a log range needs LOW > 0"),
    (("--space", "lr=1e-4:1e-2", "--slots", "9", "--trials", "4"), "--slots: 9 slots for 4 trials"),
    (("--space", "lr=1e-4:1e-2", "--min-budget", "100"), "is not a whole number of updates"),
    (("--space", "lr=1e-4:1e-2", "--grid", "lr=1,2"), "unrecognized arguments: --grid"),
])
def test_the_cli_refuses_a_bad_search_in_one_line(args, message):
    proc = here("tune", *TINY_FLAGS, *args)
    assert message in one_error_line(proc)


# --- Optuna's TPE through ask and tell ---

def study_of(run_dir):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name="purejaxppo", storage=JournalStorage(JournalFileBackend(
        str(run_dir / "optuna.journal"))))


def test_tpe_is_told_every_score_and_a_resume_asks_nothing_twice(tmp_path):
    spec = dataclasses.replace(SPEC, sampler="tpe", trials=10)
    straight = tune(CONFIG, spec, tmp_path / "straight")
    study = study_of(tmp_path / "straight").trials
    assert len(study) == 10
    for t, frozen in zip(straight.search.trials, study):
        assert frozen.params == t.values  # the asked values are the trial's
        state = {"finished": "COMPLETE", "stopped": "PRUNED", "diverged": "FAIL"}[t.status]
        assert frozen.state.name == state
        if t.status == "finished":
            assert frozen.value == t.scores[-1]
        assert frozen.intermediate_values == dict(zip(straight.search.rungs, t.scores))
    # the asked values reach the program: each slot ends with its last trial's hyperparameters
    for slot in range(spec.slots):
        last = max((t for t in straight.search.trials if t.slot == slot), key=lambda t: t.id)
        assert float(straight.state.hparams.lr[slot]) == np.float32(last.values["lr"])
    # stopped at update 9, run on to 15 (asking and telling past 9), then resumed from checkpoint 9, as after
    # a kill: the trials asked after 9 are taken from the study, not asked again, and the files are a straight run's
    run_dir = tmp_path / "resumed"
    tune(CONFIG, spec, run_dir, until_update=9)
    assert tune(CONFIG, None, run_dir, resume=True, until_update=15).update == 15
    tune(CONFIG, None, run_dir, resume=True, step=9)
    assert len(study_of(run_dir).trials) == 10
    for name in ("trials.csv", "metrics.csv", "best.yaml"):
        assert filecmp.cmp(tmp_path / "straight" / name, run_dir / name, shallow=False), name


def test_the_gp_sampler_without_torch_is_refused_in_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # as where PyTorch is not installed
    with pytest.raises(ConfigError, match="--sampler gp: Optuna's GP sampler needs PyTorch"):
        tune(CONFIG, dataclasses.replace(SPEC, sampler="gp"))


def test_a_resumed_search_keeps_its_trials_budget(straight):
    with pytest.raises(ConfigError, match="a resumed search keeps its trials' budget"):
        tune(CONFIG.replace(total_timesteps=CONFIG.total_timesteps * 2), None, straight.run_dir, resume=True)
