"""Typed experiment configuration: one frozen dataclass per concern, composed into ExperimentConfig.

Round-trips through YAML. Unknown keys are errors that name the key and list the valid ones; values are
checked against the field's type (ints are accepted where floats are expected, nothing else is coerced).

Example::

    >>> cfg = ExperimentConfig()
    >>> cfg = apply_overrides(cfg, ["model.core.layers=3", "train.lr=0.005"])
    >>> cfg.model.core.layers
    3
    >>> ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from sensorium.atomic import write_text
from sensorium.errors import ConfigError


# ----------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DataConfig:
    """Which scans to read and how to turn them into batches.

    ``scans``: scan folders, official ``.zip`` files, or directories holding either (expanded, sorted).
    Relative paths are resolved against the working directory of the process that loads them.
    """

    scans: tuple[str, ...] = ()
    cache_dir: str = ".sensorium-cache"  # preprocessed, memory-mappable copies of the scans
    image_height: int = 36  # model resolution in pixels (official images are 144 x 256)
    image_width: int = 64
    behavior_channels: bool = True  # append the 3 normalised behaviour values as constant image channels
    batch_size: int = 128  # training batch size, per scan
    eval_batch_size: int = 0  # evaluation chunk size; 0 = the fastest for the device (runtime.eval_batch_size)

    def __post_init__(self) -> None:
        _positive(self, "image_height", "image_width", "batch_size")
        _non_negative(self, "eval_batch_size")  # 0 = auto


# ---------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class CoreConfig:
    """neuralpredictors ``Stacked2dCore`` settings; defaults are the SENSORIUM+ baseline."""

    layers: int = 4
    hidden_channels: int = 64
    input_kern: int = 9
    hidden_kern: int = 7
    depth_separable: bool = True
    linear: bool = False  # True: no nonlinearities inside the core (the LN baseline)
    gamma_input: float = 6.3831  # Laplace smoothness penalty on the first layer
    gamma_hidden: float = 0.0
    pad_input: bool = False  # 36x64 -> 28x56 with input_kern 9
    batch_norm: bool = True
    momentum: float = 0.9
    input_regularizer: Literal["LaplaceL2norm", "LaplaceL2", "GaussianLaplaceL2"] = "LaplaceL2norm"
    stack: int = -1  # read out only the last layer

    def __post_init__(self) -> None:
        _positive(self, "layers", "hidden_channels", "input_kern", "hidden_kern")
        for name in ("input_kern", "hidden_kern"):
            if getattr(self, name) % 2 == 0:
                raise ConfigError(f"model.core.{name}={getattr(self, name)}: expected an odd kernel size")
        if self.gamma_input < 0 or self.gamma_hidden < 0:
            raise ConfigError("model.core.gamma_input / gamma_hidden: expected values >= 0")
        if not -self.layers <= self.stack < self.layers:
            raise ConfigError(f"model.core.stack={self.stack}: expected a layer index in [-layers, layers) = "
                              f"[{-self.layers}, {self.layers})")
        if not 0.0 < self.momentum <= 1.0:
            raise ConfigError(f"model.core.momentum={self.momentum}: expected 0 < value <= 1 (batch-norm momentum)")


@dataclass(frozen=True)
class ReadoutConfig:
    """Per-scan Gaussian readout (see sensorium.models.readout)."""

    samples: int = 1  # K positions drawn per neuron and image in training mode, readouts averaged
    gauss_type: Literal["full", "uncorrelated", "isotropic"] = "full"
    init_sigma: float = 0.1
    init_mu_range: float = 0.3
    gamma_readout: float = 0.0076  # L1 penalty on readout features
    bias: bool = True
    grid_mean_predictor: bool = True  # predict positions from cortical x, y (type "cortex")
    gmp_hidden_layers: int = 1
    gmp_hidden_features: int = 30

    def __post_init__(self) -> None:
        _positive(self, "samples", "gmp_hidden_features")
        if not 0.0 < self.init_mu_range <= 1.0:
            raise ConfigError(f"model.readout.init_mu_range={self.init_mu_range}: expected 0 < value <= 1")
        if self.init_sigma <= 0:
            raise ConfigError(f"model.readout.init_sigma={self.init_sigma}: expected a value > 0")
        if self.gamma_readout < 0:
            raise ConfigError(f"model.readout.gamma_readout={self.gamma_readout}: expected a value >= 0")
        _non_negative(self, "gmp_hidden_layers")


@dataclass(frozen=True)
class ShifterConfig:
    """Per-scan MLP on the normalised pupil centre giving one 2-D shift of all readout positions."""

    enabled: bool = True
    hidden_channels: int = 5
    layers: int = 3  # Linear(2,5)-Tanh-Linear(5,5)-Tanh-Linear(5,2)-Tanh

    def __post_init__(self) -> None:
        _positive(self, "hidden_channels", "layers")


@dataclass(frozen=True)
class ModelConfig:
    core: CoreConfig = field(default_factory=CoreConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    shifter: ShifterConfig = field(default_factory=ShifterConfig)
    elu_offset: float = 0.0  # output nonlinearity: elu(x + offset) + 1


# ------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainConfig:
    """The reference recipe (SENSORIUM.md §3); every constant has the reference value as default."""

    lr: float = 0.009
    max_epochs: int = 200
    patience: int = 5  # epochs without improvement before an lr decay (and for ReduceLROnPlateau)
    lr_decay_factor: float = 0.3
    lr_decay_steps: int = 4  # lr-decay rounds before early stopping ends the run
    tolerance: float = 1e-6  # absolute improvement that counts
    min_lr: float = 1e-4
    loss_scale: bool = True  # multiply the summed Poisson loss by sqrt(n_trials_of_scan / batch_size)
    train_on_validation: bool = False  # also train on the validation tier (a recorded retrain choice)
    max_batches_per_epoch: int = 0  # 0 = all; >0 caps batches per scan and epoch (smoke runs)
    device: str = "auto"  # auto -> cuda if available else cpu; or cpu, cuda, cuda:1
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    # channels_last memory layout of the core: "auto" = on the CPU (1.5-2x faster there), not on GPUs
    channels_last: bool | Literal["auto"] = "auto"
    checkpoint_every_s: float = 60.0  # write last.pt/best.pt at most this often (and when a round ends); 0 = every epoch
    deterministic: bool = False  # GPU: deterministic cuDNN algorithms instead of cudnn.benchmark (see runtime)
    # arithmetic: fp32 (the reference; TF32 off on GPUs), tf32 (GPU matmuls/convs in TF32), bf16 (autocast)
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        _positive(self, "lr", "max_epochs", "patience", "lr_decay_steps")
        if not 0.0 < self.lr_decay_factor < 1.0:
            raise ConfigError(f"train.lr_decay_factor={self.lr_decay_factor}: expected 0 < value < 1")
        _non_negative(self, "max_batches_per_epoch", "threads", "min_lr", "tolerance", "checkpoint_every_s")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one training run needs; saved next to its outputs so it alone rebuilds the run."""

    name: str = "sensorium_plus"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # -- (de)serialisation ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentConfig:
        """Build from nested plain data; unknown keys and wrong types raise ConfigError."""
        return _build(cls, raw, prefix="")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data (tuples become lists) that YAML and JSON can hold."""
        return _plain(dataclasses.asdict(self))


# ------------------------------------------------------------------------------------------ functions
# `sensorium-search export` writes the best config plus a top-level `provenance:` mapping with this kind;
# load_config skips that one mapping (any other unknown top-level key stays an error).
BEST_CONFIG_KIND = "best_config"


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of a YAML file; ConfigError naming the file when missing, invalid or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an experiment YAML file, then apply ``key=value`` overrides."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    prov = raw.get("provenance")
    if isinstance(prov, dict) and prov.get("kind") == BEST_CONFIG_KIND:  # best_config.yaml of a search
        raw = {k: v for k, v in raw.items() if k != "provenance"}
    try:
        cfg = ExperimentConfig.from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return apply_overrides(cfg, overrides or [])


def save_config(cfg: ExperimentConfig, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``cfg`` as YAML (optionally with extra top-level provenance keys, e.g. for best_config), whole or
    not at all (:func:`sensorium.atomic.write_text`)."""
    data = cfg.to_dict()
    if extra:
        data = {**data, **extra}
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``dotted.key=value`` strings; values are parsed as YAML scalars (``3``, ``0.1``, ``true``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=0.005")
        key, text = item.split("=", 1)
        cfg = set_value(cfg, key.strip(), yaml.safe_load(text))
    return cfg


def set_value(cfg: ExperimentConfig, key: str, value: Any) -> ExperimentConfig:
    """Return a copy of ``cfg`` with the dotted ``key`` set to ``value`` (validated like a YAML file)."""
    field_types(key)  # raises for unknown keys, listing the valid ones
    raw = cfg.to_dict()
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
    return ExperimentConfig.from_dict(raw)


def get_value(cfg: ExperimentConfig, key: str) -> Any:
    """The value at a dotted key, e.g. ``get_value(cfg, "model.core.layers")``."""
    field_types(key)
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def field_types(key: str | None = None) -> dict[str, Any]:
    """All leaf keys of ExperimentConfig with their types; with ``key``, check it exists and return it."""
    leaves: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, tp in get_type_hints(cls).items():
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{name}.")
            else:
                leaves[f"{prefix}{name}"] = tp

    walk(ExperimentConfig, "")
    if key is None:
        return leaves
    if key not in leaves:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(leaves))}")
    return {key: leaves[key]}


def config_hash(cfg: ExperimentConfig) -> str:
    """A short, stable hash of the full resolved config (12 hex digits)."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- helpers
_SECTION = {
    "DataConfig": "data",
    "CoreConfig": "model.core",
    "ReadoutConfig": "model.readout",
    "ShifterConfig": "model.shifter",
    "TrainConfig": "train",
}


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{_SECTION[type(obj).__name__]}.{name}={value}: expected a value > 0")


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            raise ConfigError(f"{_SECTION[type(obj).__name__]}.{name}={value}: expected a value >= 0")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {', '.join(prefix + k for k in hints)}"
        )
    kwargs = {}
    for name, value in raw.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}={value!r}: expected one of {list(get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r}: expected {tp}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value] if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list")
        item_tp = get_args(tp)[0]
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
