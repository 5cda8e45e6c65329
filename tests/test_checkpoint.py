"""Checkpoints with orbax: refused saves, mismatched and corrupt checkpoints, one clear message each."""

import shutil
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo import train
from purejaxppo.errors import CheckpointError
from purejaxppo.host import checkpoint, trained
from purejaxppo.host.population import Member
from purejaxppo.host.record import RunRecord, Signature
from purejaxppo.program.ppo import abstract_states, make_ppo

from conftest import TINY, restored


class Toy(NamedTuple):
    params: jax.Array
    count: jax.Array


RECORD = RunRecord("run", TINY, (Member(TINY.seed),), stacked_runs=1, devices=1)


def test_a_save_orbax_declines_is_an_error_not_a_silent_skip(tmp_path):
    saver = checkpoint.Checkpointer(tmp_path, keep=3)
    try:
        saver.save(5, Toy(jnp.zeros(2), jnp.int32(5)), RECORD)
        saver.wait()
        with pytest.raises(CheckpointError, match="checkpoint 3 was not written: .* already holds later checkpoint 5"):
            saver.save(3, Toy(jnp.zeros(2), jnp.int32(3)), RECORD)
    finally:
        saver.close()


def test_a_live_run_keeps_the_checkpoint_a_reader_holds_and_drops_it_after(tmp_path):
    saver = checkpoint.Checkpointer(tmp_path, keep=1)

    def save(step):
        saver.save(step, Toy(jnp.zeros(2), jnp.int32(step)), RECORD)
        saver.wait()

    try:
        save(1)
        with checkpoint.reading(tmp_path) as held:
            assert held == 1
            save(2)
            save(3)
            assert checkpoint.available_steps(tmp_path) == [1, 3]  # keep=1, and the one being read
        save(4)
        assert checkpoint.available_steps(tmp_path) == [4]
        # a pin left by a reader that died (no lock on it) keeps nothing, and is cleared away
        stale = tmp_path / checkpoint.READERS_DIR / "4-999999-deadbeef"
        stale.write_text("")
        save(5)
        assert checkpoint.available_steps(tmp_path) == [5] and not stale.exists()
        with checkpoint.reading(tmp_path, step=5):
            pass
        assert list((tmp_path / checkpoint.READERS_DIR).iterdir()) == []  # a reader leaves no pin behind
    finally:
        saver.close()


def test_a_state_round_trips_with_its_own_types_and_its_record(straight):
    step, record = checkpoint.read_record(straight.run_dir)
    state = restored(straight.run_dir, abstract_states(make_ppo(TINY), 1), step)
    assert type(state) is type(straight.state) and record.update == step == TINY.num_updates
    assert jax.tree.structure(state) == jax.tree.structure(straight.state)
    assert record.members == (Member(TINY.seed),) and record.num_runs == 1 and record.kind == "run"
    assert record.config == TINY and record.signature == Signature.of(make_ppo(TINY).env)
    assert RunRecord.from_json(record.to_json()) == record


def test_arrays_of_another_shape_are_refused_whatever_the_metadata_says(straight):
    other = make_ppo(TINY.replace(hidden_sizes=(32,)))
    with pytest.raises(CheckpointError, match="does not match the config: .* has shape"):
        checkpoint.check_arrays(straight.run_dir, TINY.num_updates, abstract_states(other, 1))


def test_missing_and_corrupt_checkpoints_give_one_clear_message(straight, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        trained.load_policy(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no checkpoints"):
        trained.load_policy(tmp_path / "empty")

    broken = tmp_path / "broken"
    shutil.copytree(straight.run_dir, broken)
    step_dir = checkpoint.checkpoint_dir(broken) / str(TINY.num_updates)
    data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 0 and "d" in p.parts]
    assert data, "expected array data files in the checkpoint"
    for path in data:
        path.write_bytes(b"\0garbage")
    with pytest.raises(CheckpointError, match="is corrupt") as err:
        trained.load_policy(broken)
    assert "\n" not in str(err.value)

    (step_dir / "meta" / "metadata").write_text("{not json")
    with pytest.raises(CheckpointError, match="is corrupt: its metadata cannot be read"):
        trained.load_policy(broken)


def test_superseded_checkpoints_keep_their_metrics(straight, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(straight.run_dir, run_dir)
    assert checkpoint.supersede_later(run_dir, TINY.num_updates) is None  # nothing after the last one
    moved = checkpoint.supersede_later(run_dir, 2)
    assert checkpoint.available_steps(moved) == [TINY.num_updates]
    assert (moved / "metrics.csv").read_text() == (run_dir / "metrics.csv").read_text()
    np.testing.assert_array_equal(checkpoint.available_steps(run_dir), [])


def test_a_checkpoint_of_the_earlier_format_is_refused_with_the_reason(straight, tmp_path):
    import json

    old = tmp_path / "old"
    shutil.copytree(straight.run_dir, old)
    path = checkpoint.checkpoint_dir(old) / str(TINY.num_updates) / "meta" / "metadata"
    meta = json.loads(path.read_text())
    for key in ("members", "num_runs", "stacked_runs", "devices"):
        meta.pop(key)
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="written by an earlier purejaxppo"):
        trained.load_policy(old)


def test_zero_size_arrays_are_left_out_of_a_checkpoint_and_put_back(tmp_path):
    # an MJX env state holds some (e.g. `act` of a model without actuator state); orbax cannot store them
    tree = {"a": jnp.ones(3), "act": jnp.zeros((4, 0)), "b": {"c": jnp.zeros((0,), jnp.int32), "d": jnp.int32(2)}}
    assert [x.shape for x in jax.tree.leaves(checkpoint.without_empty(tree))] == [(3,), ()]
    saver = checkpoint.Checkpointer(tmp_path, keep=1)
    try:
        saver.save(1, tree, RECORD)
        saver.wait()
    finally:
        saver.close()
    back = restored(tmp_path, jax.eval_shape(lambda: tree), 1)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(tree)):
        assert x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y)


# written by commit b1e2f92, before the training state had a reference policy and ref_kl_coef: TINY stopped
# at update 6 (train(TINY, dir, until_update=4), compilation cache off), its .lock left out
BEFORE_FINE_TUNING = Path(__file__).parent / "data" / "checkpoint_b1e2f92"


def test_a_checkpoint_written_before_the_reference_kl_restores_and_resumes(tmp_path):
    run_dir = tmp_path / "old"
    shutil.copytree(BEFORE_FINE_TUNING, run_dir)
    resumed = train(TINY, run_dir, resume=True)
    assert resumed.first_update == 6 and int(resumed.state.update_step[0]) == TINY.num_updates
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(resumed.state.params))
    assert float(resumed.state.hparams.ref_kl_coef[0]) == 0.0 and resumed.state.ref is None  # as it was: off
    assert trained.evaluate_run(run_dir, episodes=2)[0].step == TINY.num_updates
