"""Exporting a trained policy to run without purejaxppo: its whole acting path (the observation as the
env gives it, its `obs_mask` components dropped, normalised and clipped with the run's statistics; the
network; the action as the env takes it, and the value if asked) as one program with its params inside.

- `jax`: a serialized JAX program (`jax.export`, StableHLO), which `jax.export.deserialize` loads in any
  process with JAX, purejaxppo or not.
- `onnx`: an ONNX model (through jax2onnx, the `export` extra), checked against the JAX program with
  onnxruntime before it is written.

The batch dimension is dynamic. A deterministic policy acts with its distribution's mode; a stochastic
one samples from noise given as an input (uniform for discrete actions, standard normal for Gaussians),
since neither format draws its own. A recurrent policy exports a step (the carry in, the next carry
out) and a second program that gives the initial carry for a batch of observations; a masked one
takes the mask. A JSON file beside the export says what goes in and out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo.envs.base import in_view
from purejaxppo.errors import ConfigError
from purejaxppo.host.trained import Trained, read_trained

FORMATS = {"onnx": ".onnx", "jax": ".jaxexport"}
# The ONNX model's outputs against the JAX program's, on the self-check's observations: both are float32,
# summing in other orders (measured on a MinAtar CNN's values, up to 2.4: XLA 1.5e-5 from a float64
# reference, ONNX Runtime 7.6e-5)
TOLERANCE = 2e-4


@dataclasses.dataclass(frozen=True)
class Interface:
    """The inputs and outputs of an exported program, in order: (name, shape with "batch" for the batch
    dimension, dtype)."""

    inputs: list[tuple[str, tuple[int | str, ...], str]]
    outputs: list[tuple[str, tuple[int | str, ...], str]]
    noise: str | None = None  # the `noise` input's distribution: "uniform" in (0, 1), or "normal"


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export_policy` wrote: the program (the step, for a recurrent policy), the initial carry's
    program (recurrent only), and the metadata file."""

    path: Path
    initial_carry: Path | None
    metadata: Path
    interface: Interface
    step: int  # the checkpoint's


def acting_program(trained: Trained, stochastic: bool = False, value: bool = False) -> tuple[Callable, Interface]:
    """The policy's acting path as a pure function of arrays (its params and statistics closed over), and
    its interface: `(obs[, mask][, noise][, *carry]) -> (action[, value][, *carry])`."""
    policy, config = trained.policy, trained.record.config
    params, obs_stats = jax.tree.map(jnp.asarray, (trained.params, trained.obs_stats))
    space = policy.action_space
    size = int(np.prod(trained.signature.env_observation_shape))
    seen = in_view(size, config.obs_mask)
    carry_leaves, carry_tree = jax.tree.flatten(policy.initial_carry((1,)))

    def step(obs: jax.Array, mask: jax.Array | None, carry: Any) -> tuple[Any, jax.Array, Any]:
        return policy.apply(params, obs_stats, seen(obs), carry, mask)

    noise = None
    if stochastic:
        dist = jax.eval_shape(step, jnp.zeros((1, size)), jnp.ones((1, space.n), bool) if space.masked else None,
                              policy.initial_carry((1,)))[0]
        noise = type(dist).NOISE
        if noise is None:
            raise ConfigError(f"--stochastic: a {type(dist).__name__} policy's sample cannot be driven by a noise "
                              f"input; export it deterministic")
    inputs = [("obs", ("batch", size), "float32")]
    if space.masked:
        inputs.append(("mask", ("batch", space.n), "bool"))
    if stochastic:
        inputs.append(("noise", ("batch", space.dim), "float32"))
    inputs += [(f"carry_{i}", ("batch", *leaf.shape[1:]), str(leaf.dtype)) for i, leaf in enumerate(carry_leaves)]
    outputs = [("action", ("batch", *space.shape) if space.discrete else ("batch", space.dim),
                "int32" if space.discrete else "float32")]
    if value:
        outputs.append(("value", ("batch",), "float32"))
    outputs += [(f"next_carry_{i}", ("batch", *leaf.shape[1:]), str(leaf.dtype)) for i, leaf in enumerate(carry_leaves)]

    def act(obs: jax.Array, *rest: jax.Array) -> tuple[jax.Array, ...]:
        rest = list(rest)
        mask = rest.pop(0) if space.masked else None
        given = rest.pop(0) if stochastic else None
        dist, v, carry = step(obs, mask, jax.tree.unflatten(carry_tree, rest) if carry_leaves else None)
        action = dist.deterministic_action() if given is None else dist.env_action(dist.sample_from(given))
        action = action.astype(jnp.int32) if space.discrete else action.astype(jnp.float32)
        return (action, *([v] if value else []), *jax.tree.leaves(carry))

    return act, Interface(inputs, outputs, noise)


def initial_carry_program(trained: Trained) -> tuple[Callable, Interface]:
    """A recurrent policy's carry at the start of an episode, for a batch of observations (only their batch
    dimension counts): `(obs) -> (*carry)`."""
    policy = trained.policy
    size = int(np.prod(trained.signature.env_observation_shape))
    leaves = jax.tree.leaves(policy.initial_carry((1,)))

    def initial(obs: jax.Array) -> tuple[jax.Array, ...]:
        # one value per output, though the leaves start alike: ONNX names each output's value once
        return tuple(x + jnp.zeros((), x.dtype) for x in jax.tree.leaves(policy.initial_carry((obs.shape[0],))))

    return initial, Interface([("obs", ("batch", size), "float32")],
                              [(f"carry_{i}", ("batch", *x.shape[1:]), str(x.dtype)) for i, x in enumerate(leaves)])


def _abstract(interface: Interface, batch: Any) -> list[jax.ShapeDtypeStruct]:
    return [jax.ShapeDtypeStruct(tuple(batch if d == "batch" else d for d in shape), jnp.dtype(dtype))
            for _, shape, dtype in interface.inputs]


def _to_jax(fn: Callable, interface: Interface, name: str) -> bytes:
    del name  # a serialized JAX program has no name
    (batch,) = jax.export.symbolic_shape("batch")
    return bytes(jax.export.export(jax.jit(fn))(*_abstract(interface, batch)).serialize())


def _onnx_library() -> tuple[Any, Any]:
    """jax2onnx and onnxruntime, or one line saying how to install them."""
    for name in ("jax2onnx", "onnx_ir"):  # they report optional plugins' imports and serialisation at length
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import jax2onnx
        import onnxruntime
    except ImportError as err:
        raise ConfigError(f"--format onnx: needs the export extra ({err.name} is not installed): pip install "
                          f"'purejaxppo[export]'") from None
    return jax2onnx, onnxruntime


def _to_onnx(fn: Callable, interface: Interface, name: str) -> bytes:
    jax2onnx, onnxruntime = _onnx_library()
    (batch,) = jax.export.symbolic_shape("batch")
    try:
        model = jax2onnx.to_onnx(fn, _abstract(interface, batch), model_name=name,
                                 input_names=[n for n, _, _ in interface.inputs],
                                 output_names=[n for n, _, _ in interface.outputs])
    except NotImplementedError as err:
        text = " ".join(str(err).split())
        op = text.split("primitive '")[1].split("'")[0] if "primitive '" in text else text[:200]
        raise ConfigError(f"--format onnx: this policy uses {op}, which jax2onnx cannot convert to ONNX; export "
                          f"--format jax instead") from None
    data = model.SerializeToString()
    _check_onnx(fn, interface, data, onnxruntime)
    return data


def check_inputs(interface: Interface, batch: int, seed: int = 0) -> list[np.ndarray]:
    """Inputs of `batch` rows that a program of `interface` takes: normal observations, its noise, every
    action legal, zero carries."""
    rng = np.random.default_rng(seed)
    out = []
    for name, shape, dtype in interface.inputs:
        shape = tuple(batch if d == "batch" else d for d in shape)
        if name == "mask":
            out.append(np.ones(shape, bool))
        elif name.startswith("carry"):
            out.append(np.zeros(shape, dtype))
        elif name == "noise" and interface.noise == "uniform":
            out.append(rng.uniform(1e-6, 1.0, shape).astype(dtype))
        else:
            out.append(rng.standard_normal(shape).astype(dtype))
    return out


def _check_onnx(fn: Callable, interface: Interface, data: bytes, onnxruntime: Any) -> None:
    """The ONNX model against the JAX program on random inputs: one line where they differ."""
    inputs = check_inputs(interface, 16)
    session = onnxruntime.InferenceSession(data)
    got = session.run(None, {n: x for (n, _, _), x in zip(interface.inputs, inputs)})
    want = jax.device_get(jax.jit(fn)(*inputs))
    for (name, _, _), a, b in zip(interface.outputs, got, want):
        if not np.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE):
            raise ConfigError(f"--format onnx: the ONNX model's {name} differs from the policy's (by up to "
                              f"{float(np.max(np.abs(a - np.asarray(b, a.dtype)))):.3g}); export --format jax instead")


def export_policy(
    run_dir: str | Path, format: str = "onnx", out: str | Path | None = None, *, step: int | None = None,
    run: int | None = None, stochastic: bool = False, value: bool = False,
) -> Exported:
    """Write run `run` of a run dir's checkpoint (the latest by default; a sweep's run, a PBT run's best
    member by default) as a program in `format` ("onnx" or "jax") to `out` (by default
    `RUN_DIR/policy.onnx` or `RUN_DIR/policy.jaxexport`), with `out` + `.json` beside it saying what goes
    in and out (see `output_path`). Raises ConfigError in one line for what cannot be exported."""
    if format not in FORMATS:
        raise ConfigError(f"--format: one of {', '.join(FORMATS)}; got {format!r}")
    trained = read_trained(run_dir, step, run)
    path = output_path(run_dir, format, out)
    write = _to_onnx if format == "onnx" else _to_jax
    act, interface = acting_program(trained, stochastic, value)
    written = {path: write(act, interface, "policy")}
    initial_path = None
    if trained.policy.recurrent:
        initial, initial_interface = initial_carry_program(trained)
        initial_path = path.with_name(path.name.removesuffix(FORMATS[format]) + ".initial_carry" + FORMATS[format])
        written[initial_path] = write(initial, initial_interface, "initial_carry")
    metadata = path.with_name(path.name + ".json")
    written[metadata] = json.dumps(describe(trained, format, interface, path, initial_path), indent=1).encode()
    for file, data in written.items():  # each whole or not at all: a kill leaves no half-written file
        part = file.with_name(f".{file.name}.part")
        part.write_bytes(data)
        part.replace(file)
    return Exported(path, initial_path, metadata, interface, trained.step)


def output_path(run_dir: str | Path, format: str, out: str | Path | None) -> Path:
    """Where an export goes: `out` (with the format's suffix added if it has another), `out/policy.<suffix>`
    for a folder, `RUN_DIR/policy.<suffix>` by default. One line if its folder is missing or read-only."""
    path = Path(out) if out is not None else Path(run_dir) / f"policy{FORMATS[format]}"
    if path.is_dir():
        path = path / f"policy{FORMATS[format]}"
    elif path.suffix != FORMATS[format]:
        path = path.with_name(path.name + FORMATS[format])
    if not path.parent.is_dir():
        raise ConfigError(f"--out: {path.parent} is not a folder")
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"--out: {path.parent} is not writable")
    return path


def describe(trained: Trained, format: str, interface: Interface, path: Path, initial: Path | None) -> dict[str, Any]:
    """The metadata beside an export: its files, inputs and outputs, the observation and action spaces, the
    carry, the noise, and where the policy came from."""
    record, space = trained.record, trained.signature.action_space
    signature = trained.signature.to_json()
    spec = lambda items: [{"name": n, "shape": list(s), "dtype": d} for n, s, d in items]  # noqa: E731
    config = record.config.to_dict()
    return {
        "format": format, "file": path.name, "initial_carry_file": None if initial is None else initial.name,
        "inputs": spec(interface.inputs), "outputs": spec(interface.outputs),
        "observation": {"shape": signature["env_observation_shape"], "dtype": "float32",
                        "obs_mask": list(record.config.obs_mask), "image_shape": signature["image_shape"]},
        "action_space": signature["action_space"],
        "recurrent": trained.policy.recurrent,
        "stochastic": interface.noise is not None,
        "noise": None if interface.noise is None else {"distribution": interface.noise, "shape": ["batch", space.dim]},
        "distribution": trained.policy.kind,
        "env": record.config.env, "checkpoint_step": trained.step, "env_steps": trained.step * record.config.batch_size,
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        "jax_version": jax.__version__,
    }
