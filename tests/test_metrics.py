"""The metrics store: rows per run and update, exact float32 round trips, resume truncation, and rows
torn by a crash. Host-side numpy only."""

import numpy as np
import pytest

from purejaxppo.host import metrics


def chunk(runs: int, first: int, count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    updates = first + np.arange(count)
    return {
        "env_steps": np.broadcast_to((updates + 1) * 1024, (runs, count)).astype(np.int32),
        "episode_return": rng.normal(size=(runs, count)).astype(np.float32) * 100,
        "policy_loss": rng.normal(size=(runs, count)).astype(np.float32) * 1e-6,
    }


def test_rows_round_trip_per_run_and_update(tmp_path):
    store = metrics.MetricsStore(tmp_path, 3)
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


def straight_file(folder, runs: int, chunks: list[tuple[int, int]]) -> bytes:
    """The bytes of a metrics file written chunk by chunk, each (first update, updates)."""
    folder.mkdir(exist_ok=True)
    store = metrics.MetricsStore(folder, runs)
    for first, count in chunks:
        store.write(first, chunk(runs, first, count, first))
    store.close()
    return (folder / metrics.FILE).read_bytes()


def test_a_resumed_population_appends_to_the_cut_file_in_a_straight_runs_order(tmp_path):
    chunks = [(0, 3), (3, 3), (6, 2)]
    whole = straight_file(tmp_path / "straight", 3, chunks)
    for resume_at, before in ((3, 1), (6, 2)):  # resumed after the first chunk, and after the second
        folder = tmp_path / f"resumed-{resume_at}"
        straight_file(folder, 3, chunks)  # a crashed run's rows past the checkpoint are cut, not kept
        store = metrics.MetricsStore(folder, 3, resume_from=resume_at)
        assert store.previous["env_steps"].shape == (3, resume_at)
        assert (folder / metrics.FILE).read_bytes() == whole[:len((folder / metrics.FILE).read_bytes())]
        for first, count in chunks[before:]:
            store.write(first, chunk(3, first, count, first))
        store.close()
        assert (folder / metrics.FILE).read_bytes() == whole, resume_at


def test_a_resume_keeps_the_rows_before_it_and_ignores_a_torn_row(tmp_path):
    store = metrics.MetricsStore(tmp_path, 2)
    store.write(0, chunk(2, 0, 6, 0))
    store.close()
    with (tmp_path / metrics.FILE).open("a") as f:
        f.write("1,6,7168,3.2")  # torn: fewer fields than the header
    assert metrics.read(tmp_path / metrics.FILE)["env_steps"].shape == (2, 6)
    resumed = metrics.MetricsStore(tmp_path, 2, resume_from=4)
    assert resumed.previous["env_steps"].shape == (2, 4)
    resumed.write(4, chunk(2, 4, 1, 5))
    resumed.close()
    back = metrics.read(tmp_path / metrics.FILE)
    assert back["env_steps"].shape == (2, 5)
    np.testing.assert_array_equal(back["env_steps"][0], [1024, 2048, 3072, 4096, 5120])


def test_a_last_row_without_its_newline_is_torn_for_every_reader(tmp_path):
    """A crash can cut a row inside its last number, leaving a row that parses; every reader (a resume,
    `plot`, the best member of a population) takes it as torn alike."""
    store = metrics.MetricsStore(tmp_path, 1)
    store.write(0, chunk(1, 0, 3, 0))
    store.close()
    path = tmp_path / metrics.FILE
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])  # the last row cut before its newline (or inside its last number)
    assert metrics.read(path)["episode_return"].shape == (1, 2)
    _, _, _, kept = metrics.rows_before(path, 2, 1)
    np.testing.assert_array_equal(kept["episode_return"], metrics.read(path)["episode_return"])


def test_the_kept_rows_are_not_rewritten(tmp_path):
    store = metrics.MetricsStore(tmp_path, 1)
    store.write(0, {"env_steps": np.array([[3_000_000_123]], np.int64), "x": np.array([[0.1]], np.float32)})
    store.close()
    before = (tmp_path / metrics.FILE).read_bytes()
    metrics.MetricsStore(tmp_path, 1, resume_from=1).close()
    assert (tmp_path / metrics.FILE).read_bytes() == before
    assert before.decode().splitlines()[1] == "0,0,3000000123,0.100000001"


@pytest.mark.parametrize("damage, reason", [
    (lambda text: "," + text.replace("\n", "\n,"), "its header ',run,update,env_steps...' is not run,update,<metrics>"),
    (lambda text: text.split("\n", 1)[0] + "\n", "it holds 0 readable rows before update 4 where 2 run(s) need 8"),
    (lambda text: "\n".join(line for line in text.split("\n") if not line.startswith("1,2,")),
     "it holds 7 readable rows before update 4 where 2 run(s) need 8"),
])
def test_a_file_that_cannot_be_read_to_the_resume_point_is_set_aside_with_one_note(tmp_path, capsys, damage, reason):
    straight_file(tmp_path, 2, [(0, 6)])
    damaged = damage((tmp_path / metrics.FILE).read_text())
    (tmp_path / metrics.FILE).write_text(damaged)
    store = metrics.MetricsStore(tmp_path, 2, resume_from=4)
    assert store.previous == {}
    (moved,) = (tmp_path / "superseded").iterdir()
    assert (moved / metrics.FILE).read_text() == damaged  # kept as it was
    assert capsys.readouterr().err == (f"purejaxppo: note: {tmp_path / metrics.FILE}: {reason}; it is now "
                                       f"{moved / metrics.FILE}, and this run's metrics.csv starts at update 4\n")
    store.write(4, chunk(2, 4, 2, 4))
    store.close()
    assert metrics.read(tmp_path / metrics.FILE)["env_steps"].shape == (2, 2)


def test_rows_of_an_earlier_versions_metrics_are_rewritten_in_one_rename(tmp_path, capsys):
    old = {"env_steps": np.array([[64, 128]]), "gone": np.array([[1.5, 2.5]])}
    store = metrics.MetricsStore(tmp_path, 1)
    store.write(0, old)
    store.close()
    written = (tmp_path / metrics.FILE).read_text()
    store = metrics.MetricsStore(tmp_path, 1, resume_from=2)
    store.write(2, {"env_steps": np.array([[192]]), "new": np.array([[0.5]], np.float32)})
    store.close()
    assert (tmp_path / metrics.FILE).read_text().splitlines() == [
        "run,update,env_steps,new", "0,0,64,nan", "0,1,128,nan", "0,2,192,0.5"]
    assert list(store.previous) == ["env_steps", "new"] and np.isnan(store.previous["new"]).all()  # as the file
    (kept,) = (tmp_path / "superseded").glob("earlier-metrics-*/metrics.csv")
    assert kept.read_text() == written and "rewritten with this version's columns" in capsys.readouterr().err


def test_final_return_and_the_guard():
    returns = np.array([[np.nan] * 5 + [1.0, np.nan, 3.0, 5.0, 7.0]])
    assert metrics.final_return(returns[0]) == 7.0  # the last 10%: one update
    assert np.isnan(metrics.final_return(np.full(4, np.nan)))
    bad = {"policy_loss": np.array([[0.0, 1.0, np.inf], [0.0, np.nan, 0.0]]), "grad_norm": np.zeros((2, 3))}
    assert metrics.first_non_finite(bad) == (1, "policy_loss")
    assert metrics.first_non_finite({"episode_return": np.full((1, 3), np.nan)}) is None  # not guarded
