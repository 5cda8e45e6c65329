"""Videos of trained policies: `render` writes a GIF and an MP4 that decode, with one frame per step of
each episode, every frame one size, frames that change, and each episode's return the one `eval` gives
for the same seed; the CLI and its one-line refusals (a bad suffix, a missing folder, an env that cannot
draw). Each family's drawing of its states is checked in test_env_conformance.py."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from purejaxppo import train
from purejaxppo.host.trained import evaluate_run
from purejaxppo.host.video import CAPTION, FPS, render_run

from conftest import TINY, TINY_FLAGS, here, one_error_line


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train(TINY, tmp_path_factory.mktemp("video") / "run").run_dir


@pytest.mark.parametrize("suffix", ["gif", "mp4"])
def test_render_writes_each_step_of_the_episodes_eval_plays(run_dir, tmp_path, suffix):
    out = tmp_path / f"episodes.{suffix}"
    done = render_run(run_dir, out, episodes=2, seed=3)
    _, returns, lengths = evaluate_run(run_dir, 2, seed=3)
    assert done.returns == [float(r) for r in returns] and done.lengths == [int(n) for n in lengths]
    assert done.frames == sum(done.lengths) and done.path == out
    if suffix == "mp4":
        frames = iio.imread(out)
        assert frames.shape[0] == done.frames and frames.shape[1:3] == done.size
    else:
        with Image.open(out) as gif:  # Pillow merges a frame equal to the one before into its duration
            durations = []
            for k in range(gif.n_frames):
                gif.seek(k)
                durations.append(gif.info["duration"])
            assert gif.size == (done.size[1], done.size[0])
        assert sum(durations) == done.frames * 10 * round(100 / FPS)  # in hundredths of a second
        frames = iio.imread(out)
    pictures = frames[:, CAPTION:]
    assert not np.array_equal(pictures[0], pictures[len(pictures) // 2])  # the cart and pole move


def test_the_cli_renders_and_refuses_in_one_line(run_dir, tmp_path):
    proc = here("render", str(run_dir), "--out", str(tmp_path / "a.gif"), "--episodes", "1", "--stochastic")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {tmp_path / 'a.gif'}: " in proc.stdout and "1 episode(s)" in proc.stdout
    assert "suffix" not in proc.stderr
    assert "write a .gif or an .mp4" in one_error_line(here("render", str(run_dir), "--out", str(tmp_path / "a.avi")))
    missing = one_error_line(here("render", str(run_dir), "--out", str(tmp_path / "no" / "a.mp4")))
    assert "does not exist" in missing


def test_an_env_that_cannot_draw_is_refused_in_one_line(tmp_path):
    corridor = train(TINY.replace(env="test_custom_env:Corridor", env_kwargs={"max_steps_in_episode": 8},
                                  total_timesteps=4 * 16 * 2), tmp_path / "corridor")
    line = one_error_line(here("render", str(corridor.run_dir)))
    assert "render: test_custom_env:Corridor has no drawing" in line and not (corridor.run_dir / "render.mp4").exists()


def video_summaries(folder) -> list[int]:
    """The env steps of the video summaries in a TensorBoard folder's event files (TFRecord framing read
    by hand: length, its CRC, the event, its CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    steps = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 16 + length
            steps += [event.step for v in event.summary.value if v.tag == "video/episode" and v.image.height]
    return steps


def test_training_videos_land_at_their_updates_and_a_resume_writes_none_twice(tmp_path):
    config = TINY.replace(video_every=3, tensorboard=True)  # 8 updates in chunks of 3: videos at 3, 6 and 8
    straight = train(config, tmp_path / "straight").run_dir
    assert sorted(p.name for p in (straight / "videos").iterdir()) == ["update-3.mp4", "update-6.mp4", "update-8.mp4"]
    assert video_summaries(straight / "tensorboard") == [3 * TINY.batch_size, 6 * TINY.batch_size, 8 * TINY.batch_size]
    frames = iio.imread(straight / "videos" / "update-8.mp4")
    assert frames.shape[0] > 1 and not np.array_equal(frames[0], frames[-1])
    resumed = tmp_path / "resumed"
    train(config, resumed, until_update=4)  # stops at 6, with its videos of 3 and 6
    train(config, resumed, resume=True)
    for name in ("update-3.mp4", "update-6.mp4", "update-8.mp4"):
        assert (resumed / "videos" / name).read_bytes() == (straight / "videos" / name).read_bytes(), name
    assert sorted(video_summaries(resumed / "tensorboard")) == video_summaries(straight / "tensorboard")


def test_video_every_on_an_env_that_cannot_draw_is_refused_before_compiling(tmp_path):
    line = one_error_line(here("train", *TINY_FLAGS, "--set", "env=test_custom_env:Corridor", "--set", "video_every=2",
                               "--run-dir", str(tmp_path / "r")))
    assert "video_every: render: test_custom_env:Corridor has no drawing" in line and not (tmp_path / "r").exists()
