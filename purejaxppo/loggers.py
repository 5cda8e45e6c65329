"""Optional metric sinks besides metrics.csv: TensorBoard event files and Weights & Biases.

They receive host-side scalars between chunks, one point per update at its env-step count.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from purejaxppo.config import PPOConfig


class Loggers:
    def __init__(self, sinks: list[Any]):
        self._sinks = sinks

    @classmethod
    def create(cls, config: PPOConfig, run_dir: Path) -> Loggers:
        sinks: list[Any] = []
        if config.tensorboard:
            from tensorboardX import SummaryWriter

            sinks.append(_TensorBoard(SummaryWriter(str(run_dir / "tensorboard"))))
        if config.wandb:
            import wandb

            sinks.append(_WandB(wandb.init(project=config.wandb_project, config=config.to_dict(),
                                           dir=str(run_dir), name=run_dir.name, id=run_dir.name, resume="allow")))
        return cls(sinks)

    def log(self, first_update: int, metrics: dict[str, np.ndarray]) -> None:
        if not self._sinks:
            return
        for i in range(len(metrics["env_steps"])):
            step = int(metrics["env_steps"][i])
            scalars = {k: float(v[i]) for k, v in metrics.items() if k != "env_steps" and math.isfinite(float(v[i]))}
            scalars["update"] = float(first_update + i)
            for sink in self._sinks:
                sink.log(step, scalars)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


class _TensorBoard:
    def __init__(self, writer: Any):
        self._writer = writer

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        self._writer.close()


class _WandB:
    def __init__(self, run: Any):
        self._run = run

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log({f"train/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self._run.finish()
