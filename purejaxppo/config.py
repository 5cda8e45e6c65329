"""The one typed, frozen configuration of a PPO run, with YAML loading, overrides and validation.

Each field's metadata is the single declaration of what it is: its documentation and range, its group
(env, algorithm, optimizer, network, observation, evaluation, fine-tune, run control), whether the
compiled program reads it as a traced value (`traced`), whether a nonzero value switches a variant on
(`switch`) and when it has no effect (`inert_when`). `HParams`, the sweepable keys, the keys a resume
may change (run control), the keys a fine-tuning run shares with its source, the docs table and its
sections derive from it.

Validation is pure and cheap: types, ranges and cross-field rules, with no env built and no JAX work.
What needs the env (its name, its parameters, whether the distribution fits its actions) is checked
once, when the program's pieces are made (`program.ppo.make_ppo`), still before anything compiles.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from purejaxppo.errors import ConfigError, unknown_key


def _doc(text: str, source: str = "common practice", **checks: Any) -> dict[str, Any]:
    return {"doc": text, "source": source, **checks}


def _traced(text: str, source: str = "common practice", **checks: Any) -> dict[str, Any]:
    """A float the compiled program reads as a value: one program trains a grid of them."""
    return _doc(text, source, traced=True, **checks)


def _control(text: str, **checks: Any) -> dict[str, Any]:
    """A key of how a run is driven and logged, not of what it computes: a resume may change it."""
    return _doc(text, group="run control", **checks)


LR_SCHEDULES = ("constant", "linear", "cosine", "warmup_cosine")
VIDEO_FORMATS = ("mp4", "gif")
ACTIVATIONS = ("tanh", "relu", "swish", "gelu")
MEMORIES = ("none", "gru", "lstm")
TORSOS = ("mlp", "cnn")
DISTRIBUTIONS = ("auto", "categorical", "gaussian", "tanh_gaussian", "beta")
MAX_SEED = 2**32 - 1  # jax.random.key takes 32 bits; a larger seed would alias a smaller one
MAX_COUNT = 2**31 - 1  # the compiled program counts env steps and optimizer steps in int32


@dataclass(frozen=True)
class PPOConfig:
    """Every hyperparameter of a run. Field metadata holds the documentation and the range checks."""

    env: str = field(default="CartPole-v1", metadata=_doc(
        "Environment: a name (see `purejaxppo envs`), or the import path of your own, `package.module:EnvClass`.",
        group="env"))
    env_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata=_doc("Overrides of the environment's parameters, e.g. `{max_steps_in_episode: 200}`.", group="env"),
    )
    num_envs: int = field(default=32, metadata=_doc("Parallel environments per run.", min=1, group="env"))
    num_steps: int = field(default=32, metadata=_doc("Env steps per environment in one rollout.", min=1,
                                                     group="algorithm"))
    total_timesteps: int = field(
        default=500_000, metadata=_control("Env steps of the whole run (rounded down to whole updates).", min=1)
    )
    update_epochs: int = field(default=4, metadata=_doc("Passes over each rollout.", "Schulman et al. 2017", min=1,
                                                        group="algorithm"))
    num_minibatches: int = field(default=8, metadata=_doc("Minibatches per epoch.", "Schulman et al. 2017", min=1,
                                                          group="algorithm"))
    gamma: float = field(default=0.99, metadata=_traced("Discount factor.", "Schulman et al. 2017", min=0.0, max=1.0,
                                                        group="algorithm"))
    gae_lambda: float = field(
        default=0.95, metadata=_traced("GAE lambda.", "Schulman et al. 2016 (GAE)", min=0.0, max=1.0, group="algorithm")
    )
    clip_eps: float = field(
        default=0.2, metadata=_traced("Ratio clip range of the surrogate.", "Schulman et al. 2017", gt=0.0,
                                      group="algorithm")
    )
    clip_policy: bool = field(
        default=True,
        metadata=_doc("Use the clipped surrogate. Off, with kl_coef > 0, gives the KL-penalty variant.",
                      "Schulman et al. 2017", group="algorithm"),
    )
    dual_clip: float = field(
        default=0.0,
        metadata=_traced("Dual-clip constant c > 1: for negative advantages the surrogate is bounded below by c*A. "
                      "0 turns it off.", "Ye et al. 2020 (dual-clip PPO)", min=0.0, switch=True, group="algorithm"),
    )
    kl_coef: float = field(
        default=0.0,
        metadata=_traced("Initial coefficient beta of the adaptive KL penalty beta*KL; 0 turns the penalty off.",
                      "Schulman et al. 2017, sec. 4", min=0.0, switch=True, group="algorithm"),
    )
    kl_target: float = field(
        default=0.01,
        metadata=_traced("KL target of the adaptive penalty: after each update beta doubles when KL > 1.5 target "
                      "and halves when KL < target / 1.5.", "Schulman et al. 2017, sec. 4", gt=0.0,
                         inert_when=(lambda c: c.kl_coef == 0, "the adaptive KL penalty is off (kl_coef 0)"),
                             group="algorithm"),
    )
    target_kl: float = field(
        default=0.0,
        metadata=_traced("KL early stopping: once a minibatch's approximate KL (before its step) exceeds "
                      "1.5 x target_kl, the update's remaining minibatch steps are skipped. 0 turns it off.",
                      "OpenAI Spinning Up; Stable-Baselines3", min=0.0, switch=True, group="algorithm"),
    )
    kl_estimator: str = field(
        default="k3",
        metadata=_doc("Estimator of KL(old||new) for logging, the penalty and early stopping: k1 = -log r, "
                      "k3 = (r - 1) - log r (unbiased, low variance).", "Schulman 2020, 'Approximating KL'",
                      choices=("k1", "k3"), group="algorithm"),
    )
    init_from: str = field(
        default="",
        metadata=_doc("Fine-tuning: the run dir of a trained policy to start from, its params and observation "
                      "statistics, with a fresh optimizer, schedule and envs. Its network keys (hidden_sizes, "
                      "activation, normalize_obs, ...) must be these, and the env must have its observation and "
                      "action spaces. "
                      "Not a resume: the run has its own run dir and history. Empty: a fresh init.", group="fine-tune"),
    )
    init_step: int = field(
        default=0, metadata=_doc("init_from's checkpoint (its update count); 0: the newest.", min=0, group="fine-tune")
    )
    init_run: int = field(
        default=-1,
        metadata=_doc("init_from's run: its index in a sweep's runs.csv, or a PBT member; -1: the only run, or a "
                      "PBT run's best member (a sweep of several runs needs one named).", min=-1, group="fine-tune"),
    )
    ref_kl_coef: float = field(
        default=0.0,
        metadata=_traced("Coefficient of the reference KL, KL(policy || reference) to a frozen reference policy: "
                         "the policy the run starts from (init_from's, or its own first one). 0 turns it off.",
                         "Ziegler et al. 2019; Ouyang et al. 2022 (RLHF)", min=0.0, switch=True, group="fine-tune"),
    )
    ref_kl_mode: str = field(
        default="reward",
        metadata=_doc("Where the reference KL acts: reward subtracts ref_kl_coef x KL from each step's reward (after "
                      "reward_scale), as RLHF does; loss adds ref_kl_coef x KL to the loss.",
                      "Ziegler et al. 2019; Shao et al. 2024 (GRPO)", choices=("reward", "loss"), group="fine-tune"),
    )
    ref_kl_estimator: str = field(
        default="auto",
        metadata=_doc("Per-sample estimator of KL(policy || reference) on the rollout's actions: k1 = log p - "
                      "log p_ref; k3 = (q - 1) - log q with q = p_ref / p. auto: k1 in the reward, whose policy "
                      "gradient is then the KL's own; k3 in the loss, whose gradient pulls toward the reference "
                      "(the other pairs are biased and, measured, let the KL grow with the coefficient).",
                      "Schulman 2020, 'Approximating KL'; Shao et al. 2024 (GRPO, k3 in the loss)",
                      choices=("auto", "k1", "k3"), group="fine-tune"),
    )
    clip_value: bool = field(
        default=False,
        metadata=_doc("Clip the value loss: max((V-R)^2, (V_old + clip(V - V_old, -e, e) - R)^2).",
                      "Schulman et al. 2017 (baselines); Andrychowicz et al. 2021", group="algorithm"),
    )
    value_clip_eps: float = field(
        default=0.2, metadata=_traced("The e of clip_value.", "OpenAI baselines", gt=0.0,
                          inert_when=(lambda c: not c.clip_value, "clip_value is off"), group="algorithm")
    )
    vf_coef: float = field(default=0.5, metadata=_traced("Value-loss coefficient.", "Schulman et al. 2017", min=0.0,
                                                         group="algorithm"))
    ent_coef: float = field(default=0.01, metadata=_traced("Entropy-bonus coefficient.", "Schulman et al. 2017",
                                                           min=0.0, group="algorithm"))
    ent_schedule: str = field(
        default="constant",
        metadata=_doc("Schedule of the entropy coefficient over updates, from ent_coef to ent_coef_final.",
                      choices=("constant", "linear", "cosine"), group="algorithm"),
    )
    ent_coef_final: float = field(
        default=0.0, metadata=_traced("Final entropy coefficient of the linear and cosine schedules.", min=0.0,
                          inert_when=(lambda c: c.ent_schedule == "constant", "ent_schedule is constant"),
                              group="algorithm")
    )
    max_grad_norm: float = field(
        default=0.5, metadata=_traced("Global gradient-norm clip.", "Andrychowicz et al. 2021", gt=0.0,
                                      group="optimizer")
    )
    lr: float = field(default=2e-3, metadata=_traced("Adam learning rate (the peak, with a schedule).", gt=0.0,
                                                     group="optimizer"))
    lr_schedule: str = field(
        default="linear", metadata=_doc("Learning-rate schedule over all minibatch steps.", choices=LR_SCHEDULES,
                                        group="optimizer")
    )
    lr_end: float = field(
        default=0.0,
        metadata=_traced("Final learning rate of the linear, cosine and warmup_cosine schedules.", min=0.0,
                         inert_when=(lambda c: c.lr_schedule == "constant", "lr_schedule is constant"),
                             group="optimizer"),
    )
    lr_warmup_fraction: float = field(
        default=0.0,
        metadata=_doc("Fraction of all minibatch steps spent warming up (warmup_cosine only).", min=0.0, lt=1.0,
                      group="optimizer"),
    )
    adam_eps: float = field(default=1e-5, metadata=_doc("Adam epsilon.", "Andrychowicz et al. 2021", gt=0.0,
                                                        group="optimizer"))
    grad_accumulation: int = field(
        default=1,
        metadata=_doc("Micro-batches per minibatch: their gradients are averaged before one optimizer step, "
                      "which equals the whole minibatch's step with less memory held at once.", min=1,
                          group="optimizer"),
    )
    compute_dtype: str = field(
        default="float32",
        metadata=_doc("Dtype of the networks' forward and backward passes; params, optimizer state, losses, GAE "
                      "and statistics stay float32. bfloat16 pays on a GPU with large networks or batches.",
                      "Micikevicius et al. 2018 (mixed precision)", choices=("float32", "bfloat16"), group="optimizer"),
    )
    resets_per_step: int = field(
        default=0,
        metadata=_doc("0: every env that ends an episode starts its own fresh one (exact). R > 0: R fresh "
                      "starts are drawn per rollout step for all the envs, and the envs that end take them in "
                      "turn; more than R ending in one step share starts. For envs whose reset costs far more "
                      "than a step (Craftax's world generation); needs an env with step_without_reset.",
                      "Matthews et al. 2024 (Craftax's optimistic resets)", min=0, group="env"),
    )
    hidden_sizes: tuple[int, ...] = field(
        default=(64, 64), metadata=_doc("Hidden layer widths of the actor and of the critic MLP.", min_each=1,
                                        group="network")
    )
    activation: str = field(default="tanh", metadata=_doc("Hidden activation.", choices=ACTIVATIONS, group="network"))
    torso: str = field(
        default="mlp",
        metadata=_doc("mlp: the hidden_sizes Dense layers on the flat observation. cnn: unpadded convolutions "
                      "(cnn_channels, cnn_kernels, cnn_strides) over an image observation first, for an env that "
                      "declares its image (MinAtar, Craftax Pixels, XLand-MiniGrid); the default is MinAtar's "
                      "one 3 x 3 layer of 16 channels.", "Young & Tian 2019 (MinAtar)", choices=TORSOS,
                          group="network"),
    )
    cnn_channels: tuple[int, ...] = field(
        default=(16,), metadata=_doc("Output channels of each convolution of the cnn torso.", min_each=1,
                                     group="network")
    )
    cnn_kernels: tuple[int, ...] = field(
        default=(3,), metadata=_doc("Square kernel size of each convolution of the cnn torso.", min_each=1,
                                    group="network")
    )
    cnn_strides: tuple[int, ...] = field(
        default=(1,), metadata=_doc("Stride of each convolution of the cnn torso.", min_each=1, group="network")
    )
    shared_torso: bool = field(
        default=False, metadata=_doc("One hidden torso for actor and critic heads, instead of two MLPs.",
                                     group="network")
    )
    layer_norm: bool = field(default=False, metadata=_doc("Layer norm after each hidden Dense layer.", group="network"))
    memory: str = field(
        default="none",
        metadata=_doc("Recurrent core between the MLP encoder (hidden_sizes) and the heads: none (a feedforward "
                      "policy), gru or lstm. Its state resets at the first step of every episode; minibatches "
                      "hold whole env sequences, replayed from the state each started with. With shared_torso "
                      "actor and critic share one encoder and core, else each has its own.",
                      "Hausknecht & Stone 2015; Ni et al. 2022 (recurrent model-free RL)", choices=MEMORIES,
                          group="network"),
    )
    memory_size: int = field(default=128, metadata=_doc("Width of the recurrent core's state.", min=1, max=16384,
                                                        group="network"))
    hidden_gain: float = field(
        default=math.sqrt(2.0), metadata=_doc("Orthogonal-init gain of hidden layers.", "Andrychowicz et al. 2021",
                                              gt=0.0, group="network")
    )
    actor_head_gain: float = field(
        default=0.01, metadata=_doc("Orthogonal-init gain of the policy head.", "Andrychowicz et al. 2021", gt=0.0,
                                    group="network")
    )
    critic_head_gain: float = field(
        default=1.0, metadata=_doc("Orthogonal-init gain of the value head.", "Andrychowicz et al. 2021", gt=0.0,
                                   group="network")
    )
    distribution: str = field(
        default="auto",
        metadata=_doc("Action distribution. auto: categorical for discrete actions, gaussian for boxes. "
                      "gaussian is clipped to the bounds for the env only; tanh_gaussian squashes with the "
                      "log-det-Jacobian correction; beta is rescaled to the bounds.",
                      "Haarnoja et al. 2018 (tanh); Chou et al. 2017 (beta)", choices=DISTRIBUTIONS, group="network"),
    )
    state_dependent_std: bool = field(
        default=False,
        metadata=_doc("Gaussian std from the actor network (softplus + 1e-3) instead of a free log-std "
                      "parameter.", "Brax PPO (state dependent)", group="network"),
    )
    obs_mask: tuple[int, ...] = field(
        default=(),
        metadata=_doc("Indices of observation components to hide from the policy (of the flattened observation), "
                      "making any env partially observed; e.g. [1, 3] hides CartPole's velocities.", min_each=0,
                      may_be_empty=True, group="observation"),
    )
    normalize_advantages: bool = field(
        default=True, metadata=_doc("Normalise advantages per minibatch.", "Andrychowicz et al. 2021",
                                    group="algorithm")
    )
    normalize_obs: bool = field(
        default=False, metadata=_doc("Normalise observations with running batch statistics.", group="observation")
    )
    obs_clip: float = field(
        default=0.0,
        metadata=_doc("Clip observations (after normalisation, when on) to [-c, c]; 0 turns it off.",
                      "Andrychowicz et al. 2021 (c = 10 with normalisation)", min=0.0, group="observation"),
    )
    reward_scale: float = field(default=1.0, metadata=_traced("Constant factor on rewards for learning.", gt=0.0,
                                                              group="algorithm"))
    normalize_reward: bool = field(
        default=False,
        metadata=_doc("Divide rewards by the running std of each env's discounted return (statistics in the "
                      "training state).", "Engstrom et al. 2020; gym VecNormalize", group="algorithm"),
    )
    reward_clip: float = field(
        default=0.0,
        metadata=_doc("Clip the learned-from reward (after scaling and normalisation) to [-c, c]; 0 turns it off.",
                      "Mnih et al. 2015 (c = 1)", min=0.0, group="algorithm"),
    )
    eval_every: int = field(
        default=0,
        metadata=_doc("Updates between deterministic evaluations inside the compiled program, at chunk ends; "
                      "0 turns evaluation off.", min=0, group="evaluation"),
    )
    eval_episodes: int = field(
        default=10, metadata=_doc("Episodes per evaluation, one per separate eval env.", min=1, group="evaluation")
    )
    seed: int = field(default=0, metadata=_doc("PRNG seed (a sweep's seed i is seed + i).", min=0, max=MAX_SEED,
                                               group="env"))
    log_every: int = field(
        default=0,
        metadata=_control("Updates per compiled chunk between progress reports; 0 picks about 20 chunks.", min=0),
    )
    checkpoint_every: int = field(
        default=0,
        metadata=_control(
            "Updates between checkpoints, taken at the first chunk end at or after each multiple. 0: only at "
            "the end of the run, on SIGINT/SIGTERM, and the last good state when a run goes non-finite.",
            min=0,
        ),
    )
    keep_checkpoints: int = field(default=3, metadata=_control("Checkpoints kept on disk (the newest).", min=1))
    tensorboard: bool = field(
        default=False, metadata=_control("Also write TensorBoard event files (tensorboardX) to the run dir.")
    )
    wandb: bool = field(default=False, metadata=_control("Also log to Weights & Biases (needs `wandb` installed)."))
    video_every: int = field(
        default=0,
        metadata=_control("Updates between videos of one deterministic episode of the current policy (a population's "
                          "best run), at the first chunk end at or after each multiple and at the end: "
                          "RUN_DIR/videos/update-<u>.<video_format>, and to TensorBoard and W&B when they are on. "
                          "Drawn on the host while training goes on. 0 turns them off.", min=0),
    )
    video_format: str = field(
        default="mp4", metadata=_control("The videos' format: mp4 (the video extra) or gif.", choices=VIDEO_FORMATS)
    )
    wandb_project: str = field(default="purejaxppo", metadata=_control("Weights & Biases project name."))
    compilation_cache: str = field(
        default="~/.cache/purejaxppo/jax",
        metadata=_control("Folder of JAX's persistent compilation cache, used by `train` and `sweep`: a repeat run "
                      "of the same config loads its compiled program instead of compiling. Empty turns it off. "
                      "Each run uses its own, also where one Python process trains several."),
    )

    # Derived sizes. Validation guarantees these divide evenly.
    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.batch_size

    @property
    def chunk_size(self) -> int:
        size = self.log_every if self.log_every > 0 else max(1, math.ceil(self.num_updates / 20))
        for every in (self.checkpoint_every, self.eval_every):
            size = min(size, every) if every > 0 else size
        return min(size, self.num_updates)  # a chunk past the run's end would only hold skipped updates

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> PPOConfig:
        return from_dict({**self.to_dict(), **changes})


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(PPOConfig)}

# Derived from the field metadata, the one place each is declared.
TRACED: tuple[str, ...] = tuple(n for n, f in FIELDS.items() if f.metadata.get("traced"))
SWITCHES: tuple[str, ...] = tuple(n for n, f in FIELDS.items() if f.metadata.get("switch"))
GROUPS: dict[str, tuple[str, ...]] = {}  # group -> its keys, in the order the config declares them
for _name, _field in FIELDS.items():
    GROUPS.setdefault(_field.metadata["group"], ())
    GROUPS[_field.metadata["group"]] += (_name,)
RUN_CONTROL_KEYS: frozenset[str] = frozenset(GROUPS["run control"])
# What a fine-tuning run's network must share with its source's: the network's shape and what it sees.
# The distribution is compared by the kind it resolves to, and init gains no longer matter once trained.
FINE_TUNE_KEYS: tuple[str, ...] = tuple(
    k for k in GROUPS["network"] + GROUPS["observation"] if k != "distribution" and not k.endswith("_gain"))


DEFAULTS = PPOConfig()


def inert_reason(config: PPOConfig, name: str) -> str | None:
    """Why `name` has no effect on runs of `config`, or None when it acts."""
    rule = FIELDS[name].metadata.get("inert_when")
    return rule[1] if rule is not None and rule[0](config) else None


def check_sweepable(config: PPOConfig, name: str, values: list[Any]) -> None:
    """Refuse a grid axis the compiled program of `config` cannot take as traced values, or on which
    every point would train the same."""
    if name not in FIELDS:
        raise unknown_key_error(name, FIELDS)
    if name not in TRACED:
        raise ConfigError(
            f"{name}: cannot be swept in one compiled call, because it changes the program's shapes or "
            f"structure; run one sweep per value instead. Sweepable keys: {', '.join(TRACED)}"
        )
    if len(values) == 0:
        raise ConfigError(f"{name}: the grid axis has no values")
    on = getattr(config, name) != 0
    if name in SWITCHES and not on and any(v != 0 for v in values):
        raise ConfigError(f"{name}: it is off (0) in the config, so the program is built without it and the grid's "
                          f"values would be ignored; set it to one of them (--set {name}=v) to switch it on")
    if name in SWITCHES and on and any(v == 0 for v in values):
        raise ConfigError(f"{name}: 0 switches the variant off, which changes the program; sweep the nonzero "
                          f"values here and run the 0 point as a sweep of its own")
    reason = inert_reason(config, name)
    if reason:
        raise ConfigError(f"{name}: has no effect because {reason}, so every grid point would train the same")


def _type_of(name: str) -> Any:
    return typing.get_type_hints(PPOConfig)[name]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"list of {typing.get_args(tp)[0].__name__}"
    if origin is dict:
        return "mapping"
    return tp.__name__


def coerce(name: str, value: Any) -> Any:
    """Check a value against the field's type, widening int to float and lists to tuples."""
    tp = _type_of(name)
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{name}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise bad
        return tuple(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    if tp in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads exponents without a dot, such as 3e-4, as strings
            value = float(value)
        except ValueError:
            raise bad from None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unhandled config type {tp!r} for {name}")  # a bug here, not a user error


def _check_range(name: str, value: Any) -> None:
    meta = FIELDS[name].metadata
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: must be finite, got {value}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{name}: must be >= {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{name}: must be <= {meta['max']}, got {value}")
    if "gt" in meta and value <= meta["gt"]:
        raise ConfigError(f"{name}: must be > {meta['gt']}, got {value}")
    if "lt" in meta and value >= meta["lt"]:
        raise ConfigError(f"{name}: must be < {meta['lt']}, got {value}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{name}: must be one of {', '.join(meta['choices'])}; got {value!r}")
    if "min_each" in meta:
        if (len(value) == 0 and not meta.get("may_be_empty")) or any(v < meta["min_each"] for v in value):
            entries = "entries" if meta.get("may_be_empty") else "at least one entry,"
            raise ConfigError(f"{name}: needs {entries} each >= {meta['min_each']}; got {list(value)}")


# Names other PPO libraries (Stable-Baselines3, CleanRL, Brax) use for keys of ours.
ALIASES = {
    "learning_rate": "lr",
    "n_envs": "num_envs",
    "n_steps": "num_steps",
    "n_epochs": "update_epochs",
    "num_epochs": "update_epochs",
    "clip_range": "clip_eps",
    "clip_coef": "clip_eps",
    "clipping_epsilon": "clip_eps",
    "entropy_cost": "ent_coef",
    "discounting": "gamma",
    "anneal_lr": "lr_schedule",
    "norm_adv": "normalize_advantages",
    "normalize_observations": "normalize_obs",
    "reward_scaling": "reward_scale",
    "num_timesteps": "total_timesteps",
}


def unknown_key_error(key: str, known: Iterable[str], what: str = "config key") -> ConfigError:
    """An unknown config key, with the key of ours another PPO library's name means (`ALIASES`) as the hint."""
    known = list(known)
    return unknown_key(key, known, what, ALIASES[key] if ALIASES.get(key) in known else None)


def from_dict(values: Mapping[str, Any]) -> PPOConfig:
    """Build and validate a config from plain values (YAML, JSON or overrides)."""
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key not in FIELDS:
            raise unknown_key_error(key, FIELDS)
        clean[key] = coerce(key, value)
    config = PPOConfig(**clean)
    validate(config)
    return config


def validate(config: PPOConfig) -> PPOConfig:
    """Raise ConfigError for the first problem found; return the config unchanged when it is sound."""
    for name in FIELDS:
        value = getattr(config, name)
        coerce(name, value)
        _check_range(name, value)
    if config.memory != "none" and config.num_envs % config.num_minibatches:
        raise ConfigError(f"num_minibatches: a recurrent policy's minibatches hold whole env sequences, so "
                          f"num_minibatches = {config.num_minibatches} must divide num_envs = {config.num_envs}")
    if config.batch_size % config.num_minibatches:
        raise ConfigError(
            f"num_minibatches: num_envs * num_steps = {config.batch_size} is not divisible by "
            f"num_minibatches = {config.num_minibatches}"
        )
    if config.normalize_advantages and config.batch_size == config.num_minibatches:
        raise ConfigError(f"num_minibatches: {config.num_minibatches} minibatches of one sample each, with "
                          f"normalize_advantages, make every advantage 0 and the policy loss 0 for the whole run; use "
                          f"fewer minibatches, or normalize_advantages: false")
    if config.num_updates * config.batch_size > MAX_COUNT:
        raise ConfigError(f"total_timesteps: {config.num_updates * config.batch_size:,} env steps overflow the "
                          f"program's int32 step counters; at most {MAX_COUNT:,} per run")
    if config.num_updates * config.update_epochs * config.num_minibatches > MAX_COUNT:
        raise ConfigError(f"update_epochs: {config.num_updates} updates x {config.update_epochs} epochs x "
                          f"{config.num_minibatches} minibatches overflow the optimizer's int32 step count")
    if len(set(config.obs_mask)) != len(config.obs_mask):
        raise ConfigError(f"obs_mask: lists an index twice: {list(config.obs_mask)}")
    if config.total_timesteps < config.batch_size:
        raise ConfigError(
            f"total_timesteps: {config.total_timesteps} is smaller than one batch "
            f"(num_envs * num_steps = {config.batch_size})"
        )
    if config.lr_schedule == "warmup_cosine" and config.lr_warmup_fraction <= 0.0:
        raise ConfigError("lr_warmup_fraction: must be > 0 with lr_schedule warmup_cosine")
    if config.lr_schedule != "constant" and config.lr_end > config.lr:
        raise ConfigError(f"lr_end: {config.lr_end} is above the peak lr {config.lr}")
    if 0.0 < config.dual_clip <= 1.0:
        raise ConfigError(f"dual_clip: must be > 1 (or 0 for off), got {config.dual_clip}")
    if not config.clip_policy and config.kl_coef == 0.0:
        raise ConfigError("clip_policy: with the clipped surrogate off, set kl_coef > 0 for the KL-penalty variant")
    if config.dual_clip and not config.clip_policy:
        raise ConfigError("dual_clip: needs clip_policy on; dual clip bounds the clipped surrogate")
    if not config.init_from:
        for name, off in (("init_step", 0), ("init_run", -1)):
            if getattr(config, name) != off:
                raise ConfigError(f"{name}: has no effect without init_from (the run dir to start from)")
    if config.ref_kl_coef and config.memory != "none":
        raise ConfigError("ref_kl_coef: the reference KL is not yet built for recurrent policies (memory); it needs the "
                          "reference's own carry through the rollout")
    samples = config.num_envs // config.num_minibatches if config.memory != "none" else config.minibatch_size
    if samples % config.grad_accumulation:
        what = "env sequences" if config.memory != "none" else "samples"
        raise ConfigError(f"grad_accumulation: {config.grad_accumulation} does not divide a minibatch's {samples} "
                          f"{what}")
    if config.resets_per_step > config.num_envs:
        raise ConfigError(f"resets_per_step: {config.resets_per_step} is more than num_envs = {config.num_envs}, "
                          f"the most envs that can end in one step")
    if not len(config.cnn_channels) == len(config.cnn_kernels) == len(config.cnn_strides):
        raise ConfigError(f"cnn_channels: cnn_channels, cnn_kernels and cnn_strides give one entry per convolution, "
                          f"but have {len(config.cnn_channels)}, {len(config.cnn_kernels)} and "
                          f"{len(config.cnn_strides)}")
    if config.ent_schedule != "constant" and config.ent_coef_final > config.ent_coef:
        raise ConfigError(f"ent_coef_final: {config.ent_coef_final} is above ent_coef {config.ent_coef}")
    if config.state_dependent_std and config.distribution in ("categorical", "beta"):
        raise ConfigError(f"state_dependent_std: applies to gaussian and tanh_gaussian, not {config.distribution}")
    for flag, module, extra in (("tensorboard", "tensorboardX", "tensorboard"), ("wandb", "wandb", "wandb")):
        if getattr(config, flag) and importlib.util.find_spec(module) is None:
            raise ConfigError(f"{flag}: needs the {module} package; pip install 'purejaxppo[{extra}]'")
    if config.video_every and config.video_format == "mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ConfigError("video_every: MP4 videos need imageio-ffmpeg; pip install 'purejaxppo[video]', or set "
                          "video_format: gif")
    return config


class _Loader(yaml.SafeLoader):
    """YAML as a config means it: a key given twice in one mapping is an error, not its last value; and
    numbers with an exponent but no dot (3e-4, which YAML 1.1 reads as a string) are floats."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` merges, as YAML means it to
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                twice = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            if twice:
                raise ConfigError(f"{key}: given twice in one mapping (line {key_node.start_mark.line + 1}); give "
                                  f"each key once")
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """One YAML document, read as a config means it (see _Loader)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `key=value` override. The value is read as YAML, then checked against the field's type."""
    if "=" not in text:
        raise ConfigError(f"{text}: an override must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key not in FIELDS:
        raise unknown_key_error(key, FIELDS)
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if _type_of(key) is str and not isinstance(value, str):
        value = raw.strip()
    return key, value


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> PPOConfig:
    """Load a YAML config (or the defaults when path is None) and apply `key=value` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config: no such file {path}")
        try:
            loaded = yaml_load(path.read_text())
        except ConfigError as err:
            raise ConfigError(f"config: {path}: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config: {path} is not valid YAML ({str(err).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config: {path} must hold a mapping of keys to values")
        values.update(loaded)
    overrides = list(overrides)
    config = from_dict(apply_overrides(values, overrides))
    check_given(config, [*values, *(parse_override(o)[0] for o in overrides)])
    return config


def check_given(config: PPOConfig, keys: Iterable[str]) -> None:
    """Refuse a key given a value other than its default, in a config file or an override, that has no
    effect on `config`'s runs, rather than ignore it (sweeps and PBT refuse such keys the same way). A
    saved config.yaml, which lists every key, stays reusable."""
    for key in dict.fromkeys(keys):
        given = key in FIELDS and getattr(config, key) != getattr(DEFAULTS, key)
        reason = inert_reason(config, key) if given else None
        if reason:
            raise ConfigError(f"{key}: has no effect because {reason}; drop it, or change what makes it inert")


def apply_overrides(values: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """`values` with each `key=value` override applied; a key given twice is refused, not silently
    resolved in favour of the last."""
    out, given = dict(values), {}
    for text in overrides:
        key, value = parse_override(text)
        if key in given:
            raise ConfigError(f"{key}: given twice ({given[key]!r} and {text!r}); give each key once")
        given[key] = text
        out[key] = value
    return out


def save(config: PPOConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def reference_markdown() -> str:
    """The config reference of docs/config.md, a table per group, generated from the field metadata."""
    lines = [
        "# Config reference",
        "",
        "Generated from `purejaxppo/config.py` by",
        '`python -c "from purejaxppo.config import reference_markdown as r; print(r(), end=\'\')" > docs/config.md`;',
        "a test keeps this file in step with the code. Keys marked *traced* are read by the compiled",
        "program as values, so one compiled program can train several settings of them at once. A resumed",
        "run may change only the *run control* keys; a fine-tuning run's *network* and *observation* keys",
        f"must be its source's ({', '.join(FINE_TUNE_KEYS)}).",
    ]
    defaults = DEFAULTS.to_dict()
    for group, keys in GROUPS.items():
        lines += ["", f"## {group[0].upper()}{group[1:]}", "", "| key | type | default | meaning | source |",
                  "|---|---|---|---|---|"]
        for name in keys:
            meta = FIELDS[name].metadata
            doc = meta["doc"] + (" *Traced.*" if name in TRACED else "")
            if "choices" in meta:
                doc += f" One of: {', '.join(f'`{c}`' for c in meta['choices'])}."
            lines.append(f"| `{name}` | {_type_name(_type_of(name))} | `{defaults[name]}` | {doc} | {meta['source']} |")
    return "\n".join(lines) + "\n"
