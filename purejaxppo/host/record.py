"""The run record: what a checkpoint says about the run that wrote it, typed, written with each checkpoint
(JSON beside the arrays) and read by attribute everywhere. It holds the policy's signature, what the
policy sees and emits, so a trained policy loads, and a fine-tuning run checks its source, without
building the source's env or program; the network keys are the record's config's."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from purejaxppo import config as config_lib
from purejaxppo.config import PPOConfig
from purejaxppo.envs import ActionSpace, Env, image_shape
from purejaxppo.envs.base import unmasked
from purejaxppo.host.population import Member
from purejaxppo.host.search import TuneConfig
from purejaxppo.program.pbt_step import PBTConfig

KINDS = {"run": "train", "sweep": "sweep", "pbt": "pbt", "tune": "tune"}  # a record's kind, and its command
WHAT = {"run": "run", "sweep": "sweep", "pbt": "PBT run", "tune": "search"}  # a record's kind, in words


def start_again(run_dir: object, kind: str | None) -> str:
    """How to start over a run that never reached a checkpoint in `run_dir` (its files are then moved
    aside), for a `kind` ("run", "sweep", "pbt"; None where it is not known)."""
    if kind is None:
        command = f"the command that made it, with --run-dir {run_dir}"
    else:
        command = f"purejaxppo {KINDS[kind]} --run-dir {run_dir}" + (" and its other options" if kind != "run" else "")
    return f"start it again with {command} (its files are moved aside)"


@dataclasses.dataclass(frozen=True)
class Signature:
    """What a trained policy sees and emits."""

    observation_shape: tuple[int, ...]  # as the policy sees it, with obs_mask's components hidden
    env_observation_shape: tuple[int, ...]  # as the env gives it
    image_shape: tuple[int, int, int] | None  # what a CNN torso reshapes the observation to
    action_space: ActionSpace

    @classmethod
    def of(cls, env: Env) -> Signature:
        return cls(tuple(env.observation_shape), tuple(unmasked(env).observation_shape), image_shape(env),
                   env.action_space)

    def to_json(self) -> dict[str, Any]:
        space = self.action_space
        return {"observation_shape": list(self.observation_shape),
                "env_observation_shape": list(self.env_observation_shape),
                "image_shape": None if self.image_shape is None else list(self.image_shape),
                "action_space": {"discrete": space.discrete, "n": space.n, "shape": list(space.shape),
                                 "low": None if space.low is None else np.asarray(space.low).tolist(),
                                 "high": None if space.high is None else np.asarray(space.high).tolist(),
                                 "nvec": list(space.nvec), "masked": space.masked}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Signature:
        s = data["action_space"]
        if s["discrete"]:
            space = ActionSpace(True, int(s["n"]), tuple(s["shape"]), nvec=tuple(s["nvec"]), masked=bool(s["masked"]))
        else:
            space = ActionSpace.box(s["low"], s["high"], tuple(s["shape"]))
        image = data["image_shape"]
        return cls(tuple(data["observation_shape"]), tuple(data["env_observation_shape"]),
                   None if image is None else tuple(image), space)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """A run, sweep or PBT run as its checkpoints record it."""

    kind: str  # "run", "sweep", "pbt" or "tune"
    config: PPOConfig
    members: tuple[Member, ...]
    stacked_runs: int  # runs on the state's leading axis: the members, then filler runs
    devices: int
    update: int = 0  # the checkpoint's update
    signature: Signature | None = None  # None in checkpoints of versions before the record
    max_runs_per_call: int | None = None
    num_seeds: int | None = None  # a sweep's seeds per grid point
    grid: dict[str, list[float]] | None = None  # a sweep's grid
    pbt: PBTConfig | None = None  # a PBT run's setup
    tune: TuneConfig | None = None  # a search's setup
    search: dict[str, Any] | None = None  # a search's trials at the checkpoint (search.Search.to_json)

    @property
    def num_runs(self) -> int:
        return len(self.members)

    @property
    def env_steps(self) -> int:
        """Env steps of each run at the checkpoint."""
        return self.update * self.config.batch_size

    @property
    def command(self) -> str:
        """The CLI command that runs this kind."""
        return KINDS[self.kind]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "config": self.config.to_dict(),
            "members": [{"seed": m.seed, "values": dict(m.values), "point": m.point} for m in self.members],
            "num_runs": self.num_runs, "stacked_runs": self.stacked_runs, "devices": self.devices,
            "max_runs_per_call": self.max_runs_per_call, "update": self.update, "env_steps": self.env_steps,
            "signature": None if self.signature is None else self.signature.to_json(),
        }
        if self.kind == "sweep":
            out.update(num_seeds=self.num_seeds, grid=self.grid)
        if self.pbt is not None:
            out["pbt"] = self.pbt.to_json()
        if self.tune is not None:
            out.update(tune=self.tune.to_json(), search=self.search)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        """A record from its JSON, this version's or an earlier one's (which had no signature). Raises
        KeyError, TypeError or ValueError (ConfigError too) where it does not parse."""
        signature = data.get("signature")
        grid = data.get("grid")
        return cls(
            kind=str(data["kind"]), config=config_lib.from_dict(data["config"]),
            members=tuple(Member(int(m["seed"]), dict(m["values"]), int(m["point"])) for m in data["members"]),
            stacked_runs=int(data["stacked_runs"]), devices=int(data.get("devices", 1)),
            update=int(data.get("update", 0)),
            signature=None if signature is None else Signature.from_json(signature),
            max_runs_per_call=data.get("max_runs_per_call"),
            num_seeds=None if data.get("num_seeds") is None else int(data["num_seeds"]),
            grid=None if grid is None else {k: list(v) for k, v in grid.items()},
            pbt=None if data.get("pbt") is None else PBTConfig.from_json(data["pbt"]),
            tune=None if data.get("tune") is None else TuneConfig.from_json(data["tune"]),
            search=data.get("search"),
        )
