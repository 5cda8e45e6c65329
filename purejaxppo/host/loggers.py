"""Optional metric sinks besides metrics.csv: TensorBoard event files and Weights & Biases.

They receive host-side scalars between chunks, one point per update at its env-step count, one stream
per run: a single run's TensorBoard files go to `RUN_DIR/tensorboard/`, a sweep's run k's to
`RUN_DIR/tensorboard/run-k/` (TensorBoard shows them side by side); W&B gets one W&B run for the
call, with a sweep's scalars named `run-k/<metric>`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from purejaxppo.config import PPOConfig


class Loggers:
    def __init__(self, sinks: list[Any], steps_per_update: int):
        self._sinks = sinks
        self._steps_per_update = steps_per_update

    @classmethod
    def create(cls, config: PPOConfig, run_dir: Path, num_runs: int = 1) -> Loggers:
        sinks: list[Any] = []
        if config.tensorboard:
            from tensorboardX import SummaryWriter

            folders = [run_dir / "tensorboard"] if num_runs == 1 else \
                [run_dir / "tensorboard" / f"run-{k}" for k in range(num_runs)]
            sinks.append(_TensorBoard([SummaryWriter(str(folder)) for folder in folders]))
        if config.wandb:
            import wandb

            sinks.append(_WandB(wandb.init(project=config.wandb_project, config=config.to_dict(),
                                           dir=str(run_dir), name=run_dir.name, id=run_dir.name, resume="allow")))
        return cls(sinks, config.batch_size)

    def log(self, first_update: int, metrics: dict[str, np.ndarray]) -> None:
        """`metrics`: each `[runs, updates]`, the updates from `first_update` on."""
        if not self._sinks:
            return
        runs, count = metrics["env_steps"].shape
        for i in range(count):
            # the loop's count, not a run's own: a search's slot starts again at 0 with each new trial
            step = (first_update + i + 1) * self._steps_per_update
            per_run = []
            for k in range(runs):
                scalars = {n: float(v[k, i]) for n, v in metrics.items()
                           if n != "env_steps" and math.isfinite(float(v[k, i]))}
                scalars["update"] = float(first_update + i)
                per_run.append(scalars)
            for sink in self._sinks:
                sink.log(step, per_run)

    def videos(self, done: list[tuple[int, int, Path, bytes | None]]) -> None:
        """Finished training videos, as (env steps, run, file, a small GIF of it)."""
        for step, run, path, gif in done:
            for sink in self._sinks:
                sink.video(step, run, path, gif)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


class _TensorBoard:
    def __init__(self, writers: list[Any]):
        self._writers = writers

    def log(self, step: int, per_run: list[dict[str, float]]) -> None:
        for writer, scalars in zip(self._writers, per_run):
            for name, value in scalars.items():
                writer.add_scalar(f"train/{name}", value, step)

    def video(self, step: int, run: int, path: Path, gif: bytes | None) -> None:
        """An animated GIF in TensorBoard's images, as tensorboardX's add_video makes one (without moviepy)."""
        import io

        from PIL import Image
        from tensorboardX.proto.summary_pb2 import Summary

        with Image.open(io.BytesIO(gif)) as opened:
            width, height = opened.size
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
        writer = self._writers[run if len(self._writers) > 1 else 0]
        writer.file_writer.add_summary(Summary(value=[Summary.Value(tag="video/episode", image=image)]), step)

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


class _WandB:
    def __init__(self, run: Any):
        self._run = run

    def log(self, step: int, per_run: list[dict[str, float]]) -> None:
        if len(per_run) == 1:
            self._run.log({f"train/{k}": v for k, v in per_run[0].items()}, step=step)
        else:
            self._run.log({f"run-{r}/{k}": v for r, scalars in enumerate(per_run) for k, v in scalars.items()},
                          step=step)

    def video(self, step: int, run: int, path: Path, gif: bytes | None) -> None:
        import wandb

        # at W&B's current step (it drops data for a step it has passed), with the video's own env steps
        self._run.log({"video/episode": wandb.Video(str(path), format=path.suffix.lstrip(".")),
                       "video/env_steps": step})

    def close(self) -> None:
        self._run.finish()
