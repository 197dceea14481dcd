"""Typed experiment configuration: one frozen dataclass per concern, composed into ExperimentConfig; each model
component (core, readout, shifter) one frozen dataclass per family, chosen by its ``kind`` field.

Round-trips through YAML (read by ``sensorium.typed``). Unknown keys are errors that name the key and list the
valid ones; values are checked against the field's type (ints are accepted where floats are expected, nothing
else is coerced).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_type_hints

import yaml

from sensorium import typed
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
    # reference: x / std per channel (NeuroNormalizer); minmax: pupil min-max to [0, 1], its derivative x / std,
    # running |x| / max |x| (the winning SENSORIUM+ entry's scaling); see sensorium.data.dataset
    behavior_scaling: Literal["reference", "minmax"] = "reference"
    batch_size: int = 128  # training batch size, per scan
    eval_batch_size: int = 0  # evaluation chunk size; 0 = chosen from memory on a GPU, 64 on a CPU (sensorium.memory)
    # GPU only: keep the train and validation responses on the device (False: they stay in host memory, shared by
    # every trial of a node through the page cache, and each batch's rows cross asynchronously)
    responses_on_device: bool = False
    # K-fold re-split of each scan's pooled train + validation trials (sensorium.data.splits), by image: fold
    # ``split_fold`` of ``split_folds`` is the validation tier, the others the train tier; test tiers untouched.
    # 0 = the official tiers. ``split_seed`` seeds the assignment of images to folds.
    split_folds: int = 0
    split_fold: int = 0
    split_seed: int = 0

    def __post_init__(self) -> None:
        _positive(self, "data", "image_height", "image_width", "batch_size")
        _non_negative(self, "data", "eval_batch_size", "split_folds", "split_seed")  # 0 = auto; 0 = official
        if self.split_folds == 1:
            raise ConfigError("data.split_folds=1: expected 0 (the official tiers) or at least 2 folds")
        if not 0 <= self.split_fold < max(1, self.split_folds):
            raise ConfigError(f"data.split_fold={self.split_fold}: expected a fold 0 to "
                              f"{max(1, self.split_folds) - 1} (data.split_folds={self.split_folds})")


# ---------------------------------------------------------------------------------------------- model
# Each component of the model (core, readout, shifter, modulator) is a family: a frozen dataclass with a ``kind`` tag
# and the fields that family reads. ModelConfig annotates a component with the union of its families; the
# reader (sensorium.typed) builds the family that ``kind`` names. Adding a family = one dataclass here, added
# to its union, and one builder registered in sensorium.models.builder (a test checks both lists agree).
# ``unread()`` names the fields that this config's switches leave unread (a search must not search them).
@dataclass(frozen=True)
class _ConvCore:
    """Fields shared by the convolutional cores of neuralpredictors (``Stacked2dCore`` and its subclasses)."""

    kind: str = ""
    layers: int = 4
    hidden_channels: int = 64
    input_kern: int = 9
    hidden_kern: int = 7
    depth_separable: bool = True
    linear: bool = False  # True: no nonlinearities inside the core (the LN baseline)
    gamma_input: float = 6.3831  # Laplace smoothness penalty on the first layer
    pad_input: bool = False  # 36x64 -> 28x56 with input_kern 9
    batch_norm: bool = True
    momentum: float = 0.9
    input_regularizer: Literal["LaplaceL2norm", "LaplaceL2", "GaussianLaplaceL2"] = "LaplaceL2norm"
    stack: int = -1  # read out only the last layer

    def __post_init__(self) -> None:
        _positive(self, "model.core", "layers", "hidden_channels", "input_kern", "hidden_kern")
        for name in ("input_kern", "hidden_kern"):
            if getattr(self, name) % 2 == 0:
                raise ConfigError(f"model.core.{name}={getattr(self, name)}: expected an odd kernel size")
        _non_negative(self, "model.core", "gamma_input")
        if not -self.layers <= self.stack < self.layers:
            raise ConfigError(f"model.core.stack={self.stack}: expected a layer index in [-layers, layers) = "
                              f"[{-self.layers}, {self.layers})")
        if not 0.0 < self.momentum <= 1.0:
            raise ConfigError(f"model.core.momentum={self.momentum}: expected 0 < value <= 1 (batch-norm momentum)")

    def unread(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class Stacked2dCoreConfig(_ConvCore):
    """neuralpredictors ``Stacked2dCore`` (the SENSORIUM+ baseline core; defaults are the baseline's)."""

    kind: Literal["stacked2d"] = "stacked2d"
    gamma_hidden: float = 0.0  # group-sparsity penalty on hidden layers (full convolutions only)

    def __post_init__(self) -> None:
        super().__post_init__()
        _non_negative(self, "model.core", "gamma_hidden")

    def unread(self) -> dict[str, str]:
        return {"gamma_hidden": "depth_separable"} if self.depth_separable else {}


@dataclass(frozen=True)
class SE2dCoreConfig(_ConvCore):
    """neuralpredictors ``SE2dCore``: the stacked core with squeeze-and-excitation blocks on its last layers."""

    kind: Literal["se2d"] = "se2d"
    n_se_blocks: int = 1  # SE blocks after the last n layers (0 = the stacked core without group sparsity)
    se_reduction: int = 16  # channel reduction inside an SE block

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "model.core", "se_reduction")
        if not 0 <= self.n_se_blocks < self.layers:
            raise ConfigError(f"model.core.n_se_blocks={self.n_se_blocks}: expected 0 <= value < layers "
                              f"({self.layers}; the first layer takes no SE block)")
        if self.se_reduction > self.hidden_channels:
            raise ConfigError(f"model.core.se_reduction={self.se_reduction}: expected at most hidden_channels "
                              f"({self.hidden_channels})")

    def unread(self) -> dict[str, str]:
        return {"se_reduction": "n_se_blocks"} if self.n_se_blocks == 0 else {}


CoreConfig = Stacked2dCoreConfig | SE2dCoreConfig


@dataclass(frozen=True)
class GaussianReadoutConfig:
    """Per-scan Gaussian readout with K position samples (sensorium.models.readout; the baseline's)."""

    kind: Literal["gaussian"] = "gaussian"
    samples: int = 1  # K positions drawn per neuron and image in training mode, readouts averaged
    gauss_type: Literal["full", "uncorrelated", "isotropic"] = "full"
    init_sigma: float = 0.1
    init_mu_range: float = 0.3
    gamma_readout: float = 0.0076  # L1 penalty on readout features
    bias: bool = True
    grid_mean_predictor: bool = True  # predict positions from cortical x, y (type "cortex")
    gmp_hidden_layers: int = 1
    gmp_hidden_features: int = 30

    takes_shift: ClassVar[bool] = True  # the shifter's (B, 2) shift moves its positions

    def __post_init__(self) -> None:
        _positive(self, "model.readout", "samples", "gmp_hidden_features", "init_sigma")
        if not 0.0 < self.init_mu_range <= 1.0:
            raise ConfigError(f"model.readout.init_mu_range={self.init_mu_range}: expected 0 < value <= 1")
        _non_negative(self, "model.readout", "gamma_readout", "gmp_hidden_layers")

    def unread(self) -> dict[str, str]:
        if self.grid_mean_predictor:
            return {"init_mu_range": "grid_mean_predictor"}
        return {"gmp_hidden_layers": "grid_mean_predictor", "gmp_hidden_features": "grid_mean_predictor"}


@dataclass(frozen=True)
class FactorizedReadoutConfig:
    """Per-scan factorised readout (neuralpredictors ``FullFactorized2d``): per neuron, a spatial mask over the
    whole feature map times a feature vector. It takes no shift: use it with ``model.shifter.enabled: false``."""

    kind: Literal["factorized"] = "factorized"
    gamma_readout: float = 0.0076  # weight of the L1 penalty on |spatial| x |features|
    bias: bool = True
    normalize: bool = True  # spatial masks normalised to unit L2 norm
    init_noise: float = 1e-3  # std of the initial spatial and feature weights
    positive_weights: bool = False  # clamp feature weights at 0

    takes_shift: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _positive(self, "model.readout", "init_noise")
        _non_negative(self, "model.readout", "gamma_readout")

    def unread(self) -> dict[str, str]:
        return {}


ReadoutConfig = GaussianReadoutConfig | FactorizedReadoutConfig


@dataclass(frozen=True)
class ShifterConfig:
    """Per-scan MLP on the normalised pupil centre giving one 2-D shift of all readout positions."""

    kind: Literal["mlp"] = "mlp"
    enabled: bool = True
    hidden_channels: int = 5
    layers: int = 3  # Linear(2,5)-Tanh-Linear(5,5)-Tanh-Linear(5,2)-Tanh

    def __post_init__(self) -> None:
        _positive(self, "model.shifter", "hidden_channels", "layers")

    def unread(self) -> dict[str, str]:
        return {} if self.enabled else {"hidden_channels": "enabled", "layers": "enabled"}


@dataclass(frozen=True)
class NoModulatorConfig:
    """No modulator: the baseline's rate as it is (the default)."""

    kind: Literal["none"] = "none"

    def unread(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class HistoryModulatorConfig:
    """A gain per neuron and trial from the session's past (sensorium.models.modulator): filters over the
    neuron's own responses on the last ``history_length`` trials, a ``state_dim``-dimensional behavioural state
    of the previous trial, and a smooth gain over the session (Gaussian bumps ``time_kernel_width`` apart, in
    session units 0-1); 0 switches a term off. ``gamma``: L2 penalty on its weights. ``lr_scale``: its weights'
    learning rate as a multiple of ``train.lr`` (their own Adam parameter group)."""

    kind: Literal["history"] = "history"
    history_length: int = 5
    state_dim: int = 2
    time_kernel_width: float = 0.1
    gamma: float = 1e-3
    lr_scale: float = 0.1

    def __post_init__(self) -> None:
        _positive(self, "model.modulator", "history_length", "lr_scale")
        _non_negative(self, "model.modulator", "state_dim", "time_kernel_width", "gamma")
        if self.time_kernel_width > 1:
            raise ConfigError(f"model.modulator.time_kernel_width={self.time_kernel_width}: expected a width in "
                              "session units, 0 (off) to 1")

    def unread(self) -> dict[str, str]:
        return {}


ModulatorConfig = NoModulatorConfig | HistoryModulatorConfig


@dataclass(frozen=True)
class ModelConfig:
    core: CoreConfig = field(default_factory=Stacked2dCoreConfig)
    readout: ReadoutConfig = field(default_factory=GaussianReadoutConfig)
    shifter: ShifterConfig = field(default_factory=ShifterConfig)
    modulator: ModulatorConfig = field(default_factory=NoModulatorConfig)  # off: the baseline stays the reference
    elu_offset: float = 0.0  # output nonlinearity: elu(x + offset) + 1

    def __post_init__(self) -> None:
        if self.shifter.enabled and not self.readout.takes_shift:
            raise ConfigError(f"model.shifter.enabled=true: the {self.readout.kind} readout takes no shift; "
                              "set model.shifter.enabled: false with it")


COMPONENTS = ("core", "readout", "shifter", "modulator")  # the family-tagged parts of ModelConfig


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
        _positive(self, "train", "lr", "max_epochs", "patience", "lr_decay_steps")
        if not 0.0 < self.lr_decay_factor < 1.0:
            raise ConfigError(f"train.lr_decay_factor={self.lr_decay_factor}: expected 0 < value < 1")
        _non_negative(self, "train", "max_batches_per_epoch", "threads", "min_lr", "tolerance", "checkpoint_every_s")


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
        return typed.build(cls, raw, prefix="")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data (tuples become lists) that YAML and JSON can hold."""
        return typed.plain(self)

    def unread_keys(self) -> dict[str, str]:
        """Dotted keys whose values nothing reads in this config -> the switch that leaves them unread
        (e.g. ``model.readout.init_mu_range`` -> ``model.readout.grid_mean_predictor``)."""
        out = {}
        for part in COMPONENTS:
            prefix = f"model.{part}."
            out.update({prefix + k: prefix + v for k, v in getattr(self.model, part).unread().items()})
        return out


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
    return set_values(cfg, {key: value})


def set_values(cfg: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """A copy of ``cfg`` with every dotted key of ``values`` set, then validated as a whole.

    A component's ``kind`` is set first: switching family keeps the fields the new family shares with the old
    one and drops the others, so ``{"model.core.kind": "se2d", "model.core.se_reduction": 8}`` works.
    """
    raw = cfg.to_dict()
    for key in sorted(values, key=lambda k: not k.endswith("." + typed.KIND)):  # kinds first
        field_types(key)  # unknown keys: the list of valid ones
        value = values[key]
        value = value.item() if hasattr(value, "item") else value  # numpy scalars from samplers
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        family = family_of(key)
        if family and node.get(typed.KIND) not in family[1]:
            raise ConfigError(f"{key}: a field of {family[0]} {' or '.join(family[1])}, but here {family[0]} is "
                              f"{node.get(typed.KIND)!r}")
        if leaf == typed.KIND and parents and node.get(leaf) != value:
            tagged = _component_families(".".join(parents))
            if value in tagged:  # else the reader names the valid kinds
                shared = {f.name for f in dataclasses.fields(tagged[value])}
                for name in [n for n in node if n not in shared]:
                    del node[name]
        node[leaf] = value
    return ExperimentConfig.from_dict(raw)


def get_value(cfg: ExperimentConfig, key: str) -> Any:
    """The value at a dotted key, e.g. ``get_value(cfg, "model.core.layers")``; ConfigError for a key of
    another family than the config's (``model.core.se_reduction`` of a stacked2d core)."""
    field_types(key)
    node: Any = cfg
    for i, part in enumerate(key.split(".")):
        if not hasattr(node, part):
            where = ".".join(key.split(".")[:i])
            raise ConfigError(f"{key}: not a field of {where}.kind={getattr(node, typed.KIND)!r}")
        node = getattr(node, part)
    return node


def field_types(key: str | None = None) -> dict[str, Any]:
    """All leaf keys of ExperimentConfig with their types, the fields of every family of a component included
    (``model.core.se_reduction``: a field of the se2d core); with ``key``, check it exists and return it."""
    leaves: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, tp in get_type_hints(cls).items():
            options = list(typed.families(tp).values()) or ([tp] if dataclasses.is_dataclass(tp) else [])
            if not options:
                leaves[f"{prefix}{name}"] = tp
            for option in options:
                walk(option, f"{prefix}{name}.")
            if options and len(options) > 1:  # the tag: one of the families' kinds
                leaves[f"{prefix}{name}.{typed.KIND}"] = Literal[tuple(typed.families(tp))]  # type: ignore[misc]

    walk(ExperimentConfig, "")
    if key is None:
        return leaves
    if key not in leaves:
        raise typed.unknown_key(key, sorted(leaves))
    return {key: leaves[key]}


def family_of(key: str) -> tuple[str, tuple[str, ...]] | None:
    """For a field of some but not all families of a component: (the component's kind key, the kinds that have
    it); None for any other key. ``family_of("model.core.se_reduction")`` ->
    ``("model.core.kind", ("se2d",))``."""
    *parents, leaf = key.split(".")
    tagged = _component_families(".".join(parents))
    if not tagged or leaf == typed.KIND:
        return None
    kinds = tuple(k for k, cls in tagged.items() if leaf in get_type_hints(cls))
    if len(kinds) == len(tagged):  # every family has it
        return None
    return ".".join(parents) + "." + typed.KIND, kinds


def config_hash(cfg: ExperimentConfig) -> str:
    """A short, stable hash of the full resolved config (12 hex digits)."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- helpers
def _component_families(path: str) -> dict[str, type]:
    """kind -> dataclass for a dotted component path (``model.core``); empty for anything else."""
    parts = path.split(".")
    if len(parts) != 2 or parts[0] != "model" or parts[1] not in COMPONENTS:
        return {}
    tp = get_type_hints(ModelConfig)[parts[1]]
    return typed.families(tp) or {typed.kind_of(tp): tp}


def _positive(obj: Any, section: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name}={value}: expected a value > 0")


def _non_negative(obj: Any, section: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            raise ConfigError(f"{section}.{name}={value}: expected a value >= 0")
