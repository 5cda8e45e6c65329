"""Videos of a trained policy: its episodes played by the compiled evaluation with every env state kept,
drawn on the host by the env's `render(state)`, each episode's return written above its frames, and
saved as a GIF (Pillow) or an MP4 (imageio's own ffmpeg). Nothing is downloaded, and no display is
needed (MuJoCo draws through EGL)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from purejaxppo.errors import ConfigError, notify
from purejaxppo.host.trained import read_trained, trained_env
from purejaxppo.program import exploit
from purejaxppo.program.evaluation import record_episodes

SUFFIXES = (".gif", ".mp4")
FPS = 30
CAPTION = 16  # pixels of the strip above each frame that says the episode and its return


@dataclasses.dataclass(frozen=True)
class Rendered:
    """What `render_run` wrote: the file, its frames and their size, and each episode's return and
    length (as `eval` gives them for the same seed, for episodes that end within `max_steps`)."""

    path: Path
    step: int  # the checkpoint
    frames: int
    size: tuple[int, int]  # height, width, the caption included
    returns: list[float]
    lengths: list[int]


def check_output(out: str | Path) -> Path:
    """Refuse, in one line, an output file that is neither a GIF nor an MP4 or whose folder is missing or
    not writable."""
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"--out: {out}: write a .gif or an .mp4")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"--out: {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"--out: {out}: not writable")
    return out


def render_run(run_dir: str | Path, out: str | Path | None = None, episodes: int = 1, step: int | None = None,
               run: int | None = None, seed: int = 0, stochastic: bool = False, max_steps: int = 1000,
               env: Any = None) -> Rendered:
    """Play `episodes` episodes of a run dir's policy (deterministic, or sampled with `stochastic`) from
    the evaluation's seed `seed`, for at most `max_steps` steps each, and write them one after another
    into `out` (default RUN_DIR/render.mp4). Raises ConfigError in one line for a bad output, or an env
    that cannot draw its states."""
    out = check_output(Path(run_dir) / "render.mp4" if out is None else out)
    if episodes < 1 or max_steps < 1:
        raise ConfigError(f"--episodes, --max-steps: at least 1 each, got {episodes} and {max_steps}")
    trained = read_trained(run_dir, step, run, env)
    made = trained_env(trained.record, env)
    if not callable(getattr(made, "render", None)):
        raise ConfigError(f"render: {trained.record.config.env} cannot draw its states; an env of your own can, "
                          f"with a render(state) method that returns an RGB array")
    states, returns, lengths = jax.device_get(jax.jit(
        lambda key: record_episodes(trained.policy, made, trained.params, trained.obs_stats, key, episodes,
                                    max_steps, stochastic))(jax.random.key(seed)))
    frames = []
    for i in range(episodes):
        caption = f"episode {i + 1}: return {float(returns[i]):.2f}" + (
            f" over the first {max_steps} steps" if lengths[i] >= max_steps else "")
        for t in range(int(lengths[i])):
            frame = np.asarray(made.render(jax.tree.map(lambda x: x[t, i], states)))
            frames.append(captioned(frame, caption))
    write_video(out, frames)
    return Rendered(out, trained.step, len(frames), frames[0].shape[:2], [float(r) for r in returns],
                    [int(n) for n in lengths])


def check_draws(env: Any) -> None:
    """Refuse `video_every`, in one line before anything compiles, where the env cannot draw a state (it
    draws its first one here) or the run spans processes."""
    if jax.process_count() > 1:
        raise ConfigError("video_every: not under jax.distributed; render the checkpoints afterwards with "
                          "purejaxppo render")
    if not callable(getattr(env, "render", None)):
        raise ConfigError(f"video_every: {env.name} cannot draw its states; an env of your own can, with a "
                          f"render(state) method that returns an RGB array")
    try:
        env.render(jax.jit(env.reset)(jax.random.key(0))[1])
    except ConfigError as err:
        raise ConfigError(f"video_every: {err}") from None


def captioned(frame: np.ndarray, text: str) -> np.ndarray:
    """`frame` (H, W, 3) below a black strip with `text` in white."""
    from PIL import Image, ImageDraw

    if frame.ndim != 3 or frame.shape[-1] not in (3, 4):
        raise ConfigError(f"render: the env drew a frame of shape {frame.shape}, not (height, width, 3)")
    frame = np.asarray(frame[..., :3], np.uint8)
    image = Image.new("RGB", (frame.shape[1], frame.shape[0] + CAPTION))
    image.paste(Image.fromarray(frame), (0, CAPTION))
    ImageDraw.Draw(image).text((3, 2), text, fill=(255, 255, 255))
    return np.asarray(image)


def thumbnail_gif(frames: Sequence[np.ndarray], width: int = 240) -> bytes:
    """`frames` as an animated GIF at most `width` pixels wide, in memory."""
    import io

    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    if images[0].width > width:
        size = (width, round(images[0].height * width / images[0].width))
        images = [image.resize(size) for image in images]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=10 * round(100 / FPS),
                   loop=0)
    return buffer.getvalue()


def write_video(out: Path, frames: Sequence[np.ndarray], fps: int = FPS) -> None:
    """`frames` (each (H, W, 3), uint8, one size) as a GIF or an MP4, by `out`'s suffix."""
    if out.suffix.lower() == ".gif":
        from PIL import Image

        first, *rest = (Image.fromarray(f) for f in frames)
        # a GIF counts time in hundredths of a second
        first.save(out, save_all=True, append_images=rest, duration=10 * max(1, round(100 / fps)), loop=0)
        return
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise ConfigError("--out: an MP4 needs imageio and its ffmpeg: pip install 'purejaxppo[video]' (a .gif needs "
                          "neither)") from None
    height, width = frames[0].shape[:2]
    with warnings.catch_warnings():  # ffmpeg starts by fork and exec, which the warning about threads is not about
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        with imageio.get_writer(out, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1) as writer:
            for frame in frames:  # H.264 takes even sizes
                writer.append_data(np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0))))


MAX_VIDEO_STEPS = 1000  # the longest episode a training video shows
MAX_PENDING = 8  # episodes waiting to be drawn (their states, on the host); one more waits for the oldest


class VideoRecorder:
    """Videos while training (`video_every`). At a due chunk end, one deterministic episode of the current
    policy of the population's best run (by the chunk's mean return; the only run of a single one) is
    played by a compiled recording program and its states copied to the host; a worker thread draws and
    writes `RUN_DIR/videos/update-<u>.<video_format>` while training goes on, and the loop hands each
    finished video to the loggers at a later chunk end. The episode's key is the run's seed folded with
    the update, so a resumed run writes the videos a straight one would, under the same names."""

    def __init__(self, ppo: Any, run_dir: Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        config = ppo.config
        self.every, self.format, self.seed = config.video_every, config.video_format, config.seed
        self.steps_per_update = config.batch_size
        self.folder = run_dir / "videos"
        self._thumbnails = config.tensorboard  # TensorBoard shows a small animated GIF of each video
        self._env = ppo.env
        self._record = jax.jit(lambda params, obs_stats, key: record_episodes(
            ppo.policy, ppo.env, params, obs_stats, key, 1, MAX_VIDEO_STEPS))
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="purejaxppo-video")
        self._pending: list[tuple[int, int, Any]] = []  # (update, run, the worker's future)

    def due(self, before: int, update: int, last: bool) -> bool:
        """Whether the chunk from `before` to `update` crossed a multiple of video_every, or was the last."""
        return update // self.every > before // self.every or last

    def record(self, update: int, states: list[Any], per_call: int, metrics: dict[str, np.ndarray]) -> None:
        """Play and copy the episode of the best run at `update`, and queue its drawing."""
        runs, updates = np.shape(metrics["episode_return"])
        run = exploit.best_members(metrics, runs, 1, window=updates)[0]  # the chunk's best, as PBT ranks members
        part = jax.tree.map(lambda x: x[run % per_call], states[run // per_call])
        key = jax.random.fold_in(jax.random.key(self.seed), update)
        recorded = jax.device_get(self._record(part.params, part.obs_stats, key))
        if len(self._pending) >= MAX_PENDING:  # the host holds a few episodes' states at most
            self._pending[0][2].exception()
        self._pending.append((update, run, self._worker.submit(self._write, update, recorded)))

    def _write(self, update: int, recorded: Any) -> tuple[Path, bytes | None]:
        states, returns, lengths = recorded
        caption = f"update {update}: return {float(returns[0]):.2f}"
        frames = [captioned(np.asarray(self._env.render(jax.tree.map(lambda x: x[t, 0], states))), caption)
                  for t in range(int(lengths[0]))]
        self.folder.mkdir(exist_ok=True)
        path = self.folder / f"update-{update}.{self.format}"
        write_video(path, frames)
        return path, thumbnail_gif(frames) if self._thumbnails else None

    def finished(self, wait: bool = False) -> list[tuple[int, int, Path, bytes | None]]:
        """The videos written since the last call, as (env steps, run, path, a small GIF of it for
        TensorBoard, or None); with `wait`, all of them.
        A video that could not be drawn or written is said in one line, and training goes on."""
        out, keep = [], []
        for update, run, future in self._pending:
            if not (wait or future.done()):
                keep.append((update, run, future))
                continue
            try:
                path, gif = future.result()
            except Exception as err:  # the env's drawing or the disk: the run itself is fine
                what = " ".join(str(err).split())[:300] or type(err).__name__
                notify(f"video of update {update} not written: {type(err).__name__}: {what}")
            else:
                out.append((update * self.steps_per_update, run, path, gif))
        self._pending = keep
        return out

    def close(self) -> list[tuple[int, int, Path, bytes | None]]:
        """Wait for the videos under way; returns those not yet handed over."""
        try:
            return self.finished(wait=True)
        finally:
            self._worker.shutdown()
