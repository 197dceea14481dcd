"""Typed experiment configuration: one frozen dataclass per concern, composed into ExperimentConfig; each model
component (core, readout, shifter, modulator, link) one frozen dataclass per family, chosen by its ``kind`` field
(each family's config lives in its file under ``sensorium.models``; they are all importable from here).

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
from typing import Any, Literal, get_type_hints

import yaml

from sensorium import typed
from sensorium.atomic import write_text
from sensorium.errors import ConfigError
from sensorium.models.registry import CORES, LINKS, MODULATORS, READOUTS, REGISTRIES, SHIFTERS, registry_union
# the families' configs, imported from here by the rest of the project (the defaults of ModelConfig among them)
from sensorium.models.cores.se2d import SE2dCoreConfig  # noqa: F401
from sensorium.models.cores.stacked2d import Stacked2dCoreConfig
from sensorium.models.links.elu1 import Elu1LinkConfig
from sensorium.models.links.exp import ExpLinkConfig  # noqa: F401
from sensorium.models.links.softplus import SoftplusLinkConfig  # noqa: F401
from sensorium.models.modulators.history import HistoryModulatorConfig  # noqa: F401
from sensorium.models.modulators.none import NoModulatorConfig
from sensorium.models.readouts.factorized import FactorizedReadoutConfig  # noqa: F401
from sensorium.models.readouts.gaussian import GaussianReadoutConfig
from sensorium.models.shifters.mlp import MLPShifterConfig


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
        typed.positive(self, "data", "image_height", "image_width", "batch_size")
        typed.non_negative(self, "data", "eval_batch_size", "split_folds", "split_seed")  # 0 = auto; 0 = official
        if self.split_folds == 1:
            raise ConfigError("data.split_folds=1: expected 0 (the official tiers) or at least 2 folds")
        if not 0 <= self.split_fold < max(1, self.split_folds):
            raise ConfigError(f"data.split_fold={self.split_fold}: expected a fold 0 to "
                              f"{max(1, self.split_folds) - 1} (data.split_folds={self.split_folds})")


# ---------------------------------------------------------------------------------------------- model
# Each component of the model (core, readout, shifter, modulator, link) is a family: a frozen dataclass with a
# ``kind`` tag and the fields that family reads, kept in the family's one file next to its module
# (sensorium.models.<component>s.<kind>). ModelConfig annotates a component with the union of its families,
# derived from the component's registry (sensorium.models.registry); the reader (sensorium.typed) builds the
# family that ``kind`` names. ``unread()`` names the fields that a config's switches leave unread (a search must
# not search them).
CoreConfig = registry_union(CORES)
ReadoutConfig = registry_union(READOUTS)
ShifterConfig = registry_union(SHIFTERS)
ModulatorConfig = registry_union(MODULATORS)
LinkConfig = registry_union(LINKS)


@dataclass(frozen=True)
class ModelConfig:
    core: CoreConfig = field(default_factory=Stacked2dCoreConfig)
    readout: ReadoutConfig = field(default_factory=GaussianReadoutConfig)
    shifter: ShifterConfig = field(default_factory=MLPShifterConfig)
    modulator: ModulatorConfig = field(default_factory=NoModulatorConfig)  # off: the baseline stays the reference
    link: LinkConfig = field(default_factory=Elu1LinkConfig)  # output nonlinearity: elu(x + offset) + 1

    def __post_init__(self) -> None:
        if self.shifter.enabled and not self.readout.takes_shift:
            raise ConfigError(f"model.shifter.enabled=true: the {self.readout.kind} readout takes no shift; "
                              "set model.shifter.enabled: false with it")


COMPONENTS = tuple(REGISTRIES)  # the family-tagged parts of ModelConfig


# ------------------------------------------------------------------------------------------- training
# The training recipe (optimiser, lr schedule, early stopping, which weights are evaluated) is a family like the
# model's components: one frozen dataclass per recipe, chosen by ``train.recipe.kind``, each built into its
# training objects by the recipe of that name in sensorium.training.recipes (a test checks both lists agree).
@dataclass(frozen=True)
class ReferenceRecipeConfig:
    """The reference recipe (SENSORIUM.md §3): Adam, ReduceLROnPlateau on validation correlation, early stopping
    with lr-decay rounds, the best weights restored at the end of each round; defaults are the reference's."""

    kind: Literal["reference"] = "reference"
    patience: int = 5  # epochs without improvement before an lr decay (and for ReduceLROnPlateau)
    lr_decay_factor: float = 0.3
    lr_decay_steps: int = 4  # lr-decay rounds before early stopping ends the run
    tolerance: float = 1e-6  # absolute improvement that counts
    min_lr: float = 1e-4  # floor of the decayed lr (of train.lr's group; other groups in proportion)

    def __post_init__(self) -> None:
        typed.positive(self, "train.recipe", "patience", "lr_decay_steps")
        if not 0.0 < self.lr_decay_factor < 1.0:
            raise ConfigError(f"train.recipe.lr_decay_factor={self.lr_decay_factor}: expected 0 < value < 1")
        typed.non_negative(self, "train.recipe", "min_lr", "tolerance")

    def unread(self) -> dict[str, str]:
        # one round: the run stops where the first decay would start, so no epoch trains at a decayed lr
        return {"lr_decay_factor": "lr_decay_steps", "min_lr": "lr_decay_steps"} if self.lr_decay_steps == 1 else {}


@dataclass(frozen=True)
class ModernRecipeConfig:
    """AdamW with decoupled ``weight_decay`` on the Linear and Conv weights, a linear warm-up over
    ``warmup_epochs`` then a cosine decay to ``final_lr_fraction * train.lr`` at ``train.max_epochs`` (per
    optimiser step), an exponential moving average of the weights (``ema_decay`` per step; 0 = off) that is what
    gets validated, checkpointed and returned, global-norm gradient clipping (``clip_norm``; 0 = off), and
    early stopping after ``patience`` epochs without improvement (0 = never: the whole schedule is trained).
    See sensorium.training.recipes.modern."""

    kind: Literal["modern"] = "modern"
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    final_lr_fraction: float = 0.01
    ema_decay: float = 0.999
    clip_norm: float = 0.0
    patience: int = 0

    def __post_init__(self) -> None:
        typed.non_negative(self, "train.recipe", "weight_decay", "warmup_epochs", "clip_norm", "patience")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ConfigError(f"train.recipe.final_lr_fraction={self.final_lr_fraction}: expected 0 <= value <= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.recipe.ema_decay={self.ema_decay}: expected 0 <= value < 1 (0 = no average)")

    def unread(self) -> dict[str, str]:
        return {}


RecipeConfig = ReferenceRecipeConfig | ModernRecipeConfig
TRAIN_COMPONENTS = ("recipe",)  # the family-tagged parts of TrainConfig


@dataclass(frozen=True)
class TrainConfig:
    """How a run trains: ``lr`` (the peak lr of every recipe) and the epoch cap are shared by every recipe; the
    rest of the recipe is ``recipe`` (default: the reference, SENSORIUM.md §3); the remaining fields say where
    and how fast it runs."""

    lr: float = 0.009
    max_epochs: int = 200  # epoch cap, and the length of a schedule that decays over the run (recipe modern)
    recipe: RecipeConfig = field(default_factory=ReferenceRecipeConfig)
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
        typed.positive(self, "train", "lr", "max_epochs")
        typed.non_negative(self, "train", "max_batches_per_epoch", "threads", "checkpoint_every_s")


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
        """Build from nested plain data; unknown keys and wrong types raise ConfigError. Configs (and
        checkpoints) written before output links and training recipes were families read as they meant:
        ``model.elu_offset`` as ``model.link`` ``{kind: elu1, offset: ...}``, ``train.patience`` (and the reference
        recipe's other knobs, ``MOVED_TO_RECIPE``) as ``train.recipe`` ``{kind: reference, ...}``."""
        if isinstance(raw, dict):
            raw = _moved(raw, "model", ("elu_offset",), "link", "elu1", {"elu_offset": "offset"})
            raw = _moved(raw, "train", MOVED_TO_RECIPE, "recipe", "reference", {})
        return typed.build(cls, raw, prefix="")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data (tuples become lists) that YAML and JSON can hold."""
        return typed.plain(self)

    def unread_keys(self) -> dict[str, str]:
        """Dotted keys whose values nothing reads in this config -> the switch that leaves them unread
        (e.g. ``model.readout.init_mu_range`` -> ``model.readout.grid_mean_predictor``)."""
        out = {}
        for section, parts in (("model", COMPONENTS), ("train", TRAIN_COMPONENTS)):
            for part in parts:
                prefix = f"{section}.{part}."
                component = getattr(getattr(self, section), part)
                out.update({prefix + k: prefix + v for k, v in component.unread().items()})
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
    one and drops the others, so ``{"model.core.kind": "se2d", "model.core.se_reduction": 8}`` works. A field
    is shared when both families have it with the same default (the same knob, e.g. what every core inherits);
    one that only has the same name starts at the new family's default (``train.recipe.patience``: 5 epochs
    before an lr decay in the reference recipe, 0 = never stop in the modern one).
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
                before, after = typed.plain(tagged[node[leaf]]()), typed.plain(tagged[value]())  # the defaults
                shared = {n for n in after if n in before and before[n] == after[n]}
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
        for name, tp in typed.field_hints(cls).items():
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
    kinds = tuple(k for k, cls in tagged.items() if leaf in typed.field_hints(cls))
    if len(kinds) == len(tagged):  # every family has it
        return None
    return ".".join(parents) + "." + typed.KIND, kinds


def config_hash(cfg: ExperimentConfig) -> str:
    """A short, stable hash of the full resolved config (12 hex digits)."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- helpers
# train.* keys of configs written before the recipe was a family: the reference recipe's knobs now
MOVED_TO_RECIPE = ("patience", "lr_decay_factor", "lr_decay_steps", "tolerance", "min_lr")


def _moved(raw: dict[str, Any], section: str, keys: tuple[str, ...], component: str, kind: str,
           renamed: dict[str, str]) -> dict[str, Any]:
    """``raw`` with the old flat ``section.<key>`` fields moved into ``section.<component>`` of family ``kind``
    (``renamed``: old name -> field name there); ConfigError when both the old keys and the component are given."""
    node = raw.get(section)
    if not isinstance(node, dict) or not any(k in node for k in keys):
        return raw
    old = [k for k in keys if k in node]
    if component in node:
        raise ConfigError(f"{section}.{old[0]}: replaced by {section}.{component}.{renamed.get(old[0], old[0])} "
                          f"(kind {kind}); give {section}.{component} only")
    moved = {typed.KIND: kind, **{renamed.get(k, k): node[k] for k in old}}
    return {**raw, section: {**{k: v for k, v in node.items() if k not in keys}, component: moved}}


def _component_families(path: str) -> dict[str, type]:
    """kind -> dataclass for a dotted component path (``model.core``, ``train.recipe``); empty for anything else."""
    sections = {"model": (ModelConfig, COMPONENTS), "train": (TrainConfig, TRAIN_COMPONENTS)}
    parts = path.split(".")
    if len(parts) != 2 or parts[0] not in sections or parts[1] not in sections[parts[0]][1]:
        return {}
    owner, _ = sections[parts[0]]
    tp = get_type_hints(owner)[parts[1]]
    return typed.families(tp) or {typed.kind_of(tp): tp}

