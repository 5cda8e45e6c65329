"""What a run shows on the console: its progress records, as a progress bar or as plain lines."""

from __future__ import annotations

import math
from typing import Any


class ProgressPrinter:
    """A rich progress bar on a terminal; one plain line per chunk elsewhere (logs, CI, pipes). The same
    for a run and a sweep: env steps are per run, steps/s over all runs, the return a mean over runs."""

    def __init__(self, total_steps: int, show: bool = True) -> None:
        from rich.console import Console

        self.console = Console()
        self._bar = None
        if show and self.console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} steps"),
                TextColumn("{task.fields[sps]:,.0f} steps/s"), TextColumn("return {task.fields[ret]}"),
                TimeRemainingColumn(), console=self.console,
            )
            self._task = self._bar.add_task("train", total=total_steps, sps=0, ret="-")
            self._bar.start()

    def __call__(self, p: Any) -> None:
        ret = "-" if math.isnan(p.episode_return) else f"{p.episode_return:.1f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=p.env_steps, sps=p.steps_per_second, ret=ret)
        else:
            runs = f" per run ({p.num_runs} runs)" if p.num_runs > 1 else ""
            print(f"update {p.update}/{p.num_updates}  env steps {p.env_steps:,}{runs}  "
                  f"{p.steps_per_second:,.0f} steps/s  return {ret}  {p.seconds:.1f} s", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
