"""The metrics store: rows per run and update, exact float32 round trips, resume truncation, and rows
torn by a crash. Host-side numpy only."""

import numpy as np

from purejaxppo import metrics


def chunk(runs: int, first: int, count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    updates = first + np.arange(count)
    return {
        "env_steps": np.broadcast_to((updates + 1) * 1024, (runs, count)).astype(np.int32),
        "episode_return": rng.normal(size=(runs, count)).astype(np.float32) * 100,
        "policy_loss": rng.normal(size=(runs, count)).astype(np.float32) * 1e-6,
    }


def test_rows_round_trip_per_run_and_update(tmp_path):
    store = metrics.MetricsStore(tmp_path)
    parts = [chunk(3, 0, 4, 0), chunk(3, 4, 2, 1)]
    store.write(0, parts[0])
    store.write(4, parts[1])
    store.close()
    back = metrics.read(tmp_path / metrics.FILE)
    assert list(back) == ["env_steps", "episode_return", "policy_loss"]
    for name in back:
        whole = np.concatenate([p[name] for p in parts], axis=1)
        np.testing.assert_array_equal(back[name].astype(whole.dtype), whole, err_msg=name)
    header, first = (tmp_path / metrics.FILE).read_text().splitlines()[:2]
    assert header == "run,update,env_steps,episode_return,policy_loss" and first.startswith("0,0,1024,")


def test_a_resume_keeps_the_rows_before_it_and_ignores_a_torn_row(tmp_path):
    store = metrics.MetricsStore(tmp_path)
    store.write(0, chunk(2, 0, 6, 0))
    store.close()
    with (tmp_path / metrics.FILE).open("a") as f:
        f.write("1,6,7168,3.2")  # torn: fewer fields than the header
    assert metrics.read(tmp_path / metrics.FILE)["env_steps"].shape == (2, 6)
    resumed = metrics.MetricsStore(tmp_path, resume_from=4)
    assert resumed.previous["env_steps"].shape == (2, 4)
    resumed.write(4, chunk(2, 4, 1, 5))
    resumed.close()
    back = metrics.read(tmp_path / metrics.FILE)
    assert back["env_steps"].shape == (2, 5)
    np.testing.assert_array_equal(back["env_steps"][0], [1024, 2048, 3072, 4096, 5120])


def test_large_integers_are_written_exactly(tmp_path):
    store = metrics.MetricsStore(tmp_path)
    store.write(0, {"env_steps": np.array([[3_000_000_123]], np.int64)})
    store.close()
    resumed = metrics.MetricsStore(tmp_path, resume_from=1)  # rewrites the kept row from its float64 value
    resumed.close()
    assert (tmp_path / metrics.FILE).read_text().splitlines()[1] == "0,0,3000000123"


def test_final_return_and_the_guard():
    returns = np.array([[np.nan] * 5 + [1.0, np.nan, 3.0, 5.0, 7.0]])
    assert metrics.final_return(returns[0]) == 7.0  # the last 10%: one update
    assert np.isnan(metrics.final_return(np.full(4, np.nan)))
    bad = {"policy_loss": np.array([[0.0, 1.0, np.inf], [0.0, np.nan, 0.0]]), "grad_norm": np.zeros((2, 3))}
    assert metrics.first_non_finite(bad) == (1, "policy_loss")
    assert metrics.first_non_finite({"episode_return": np.full((1, 3), np.nan)}) is None  # not guarded
