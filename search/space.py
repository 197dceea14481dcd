"""The search file: a base experiment config, fixed overrides, searched parameters and search settings.

A search file is data, and everything in it is checked before any trial starts: every searched key must
be a real config field (``sensorium.config.field_types``), distributions must fit the field's type, ranges
must be non-empty, and a config is built at the ends of every range and at every choice so that
``ExperimentConfig`` itself rejects values (an even kernel, a gauss_type that does not exist) up front.

Example search file::

    base: tiny.yaml                     # relative to this file, or an inline mapping
    overrides: {train.max_epochs: 6}    # fixed for this study
    parameters:
      train.lr: {type: loguniform, low: 1.0e-3, high: 3.0e-2, role: nuisance}
      model.core.hidden_kern: {type: int, low: 3, high: 9, step: 2, role: scientific}
      model.readout.gauss_type: {type: categorical, choices: [full, isotropic], role: scientific}
    search: {num_trials: 4, max_concurrent: 2, asha: {grace_period: 2, max_t: 6}}

No Ray or Optuna here: ``search.tuner`` turns a SearchSpec into their objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from search.settings import SearchSettings, build_settings, check_keys, number, plain_settings
from sensorium.config import ExperimentConfig, field_types, get_value, read_yaml_mapping, set_value
from sensorium.errors import ConfigError, UserError
from sensorium.runtime import is_cuda_request

SEARCH_FILE = "search.yaml"  # the resolved search, saved in every run folder

DISTRIBUTIONS = ("uniform", "loguniform", "int", "categorical")
ROLES = ("scientific", "nuisance")
_EXHAUSTIVE = 256  # integer ranges up to this many values are checked value by value
# Searching these would let a study "tune" what should be fixed (playbook: keep the best checkpoint instead).
_NOT_SEARCHABLE = {"train.max_epochs": "never tune the number of epochs; early stopping keeps the best one"}
# A searched key is only read when its switch is on: searching it with the switch off searches nothing.
# searched key (prefix) -> the switch that must be true for anything to read it
_REQUIRES = {"model.shifter.": "model.shifter.enabled", "model.readout.gmp_": "model.readout.grid_mean_predictor"}
# searched key -> the switch that must be false for anything to read it
_EXCLUDED_BY = {
    "model.readout.init_mu_range": "model.readout.grid_mean_predictor",  # positions come from the predictor
    "model.core.gamma_hidden": "model.core.depth_separable",  # no group sparsity on depth-separable convs
}


@dataclass(frozen=True)
class Param:
    """One searched config key. ``low``/``high`` are inclusive; ``choices`` only for categorical."""

    key: str
    type: Literal["uniform", "loguniform", "int", "categorical"]
    role: Literal["scientific", "nuisance"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def edge_values(self) -> list[Any]:
        """Values a config is built with during validation: range ends (all values of small int ranges)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            values = range(int(self.low), int(self.high) + 1, step)
            return list(values) if len(values) <= _EXHAUSTIVE else [values[0], values[-1]]
        return [self.low, self.high]


@dataclass(frozen=True)
class SearchSpec:
    """A validated search: ``base`` already has the overrides applied."""

    base: ExperimentConfig
    params: tuple[Param, ...]
    settings: SearchSettings
    source: str = ""  # the file it came from, for messages

    def resolve(self, values: dict[str, Any]) -> ExperimentConfig:
        """The full experiment config of one trial: ``base`` with the sampled ``values`` set."""
        return resolve(self.base, values)

    def to_dict(self) -> dict[str, Any]:
        """A self-contained search file (base inlined) that ``parse_search`` reads back."""
        params = {}
        for p in self.params:
            entry: dict[str, Any] = {"type": p.type, "role": p.role}
            if p.type == "categorical":
                entry["choices"] = list(p.choices)
            else:
                entry.update(low=p.low, high=p.high)
                if p.step is not None:
                    entry["step"] = p.step
            params[p.key] = entry
        return {"base": self.base.to_dict(), "parameters": params, "search": plain_settings(self.settings)}


def resolve(base: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """``base`` with every dotted key in ``values`` set (validated by ExperimentConfig)."""
    raw = base.to_dict()
    for key, value in values.items():
        field_types(key)
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value.item() if hasattr(value, "item") else value  # numpy scalars from samplers
    return ExperimentConfig.from_dict(raw)


def load_search(path: str | Path) -> SearchSpec:
    """Read and validate a search file; errors name the file and the offending key."""
    path = Path(path)
    raw = read_yaml_mapping(path, "search file")
    try:
        return parse_search(raw, base_dir=path.parent, source=str(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def load_run_spec(run_dir: Path) -> SearchSpec:
    """The validated search of a run folder (``search.yaml``, written when the run started)."""
    path = Path(run_dir) / SEARCH_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: not a search run folder ({SEARCH_FILE} is missing)")
    return parse_search(read_yaml_mapping(path, "search file"), source=str(path))


def parse_search(raw: Any, base_dir: Path = Path("."), source: str = "") -> SearchSpec:
    """Validate plain data (as read from YAML) into a SearchSpec."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(raw).__name__}")
    check_keys(raw, {"base", "overrides", "parameters", "search"}, "")
    base = _load_base(raw.get("base", {}), base_dir)
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides: expected a mapping of dotted keys to values, got {overrides!r}")
    for key, value in overrides.items():
        base = set_value(base, str(key), value)
    params_raw = raw.get("parameters") or {}
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError("parameters: expected a non-empty mapping of dotted config keys to distributions")
    params = tuple(_parse_param(str(k), v) for k, v in params_raw.items())
    for p in params:
        if p.key in overrides:
            raise ConfigError(f"parameters.{p.key}: also fixed in overrides; a key is either fixed or searched")
    settings = build_settings(raw.get("search") or {})
    spec = SearchSpec(base=base, params=params, settings=settings, source=source)
    validate(spec)
    return spec


def validate(spec: SearchSpec) -> None:
    """Check combinations: each value alone, all lows / all highs together, settings against the base."""
    for p in spec.params:
        for switch_prefix, switch in _REQUIRES.items():
            if p.key.startswith(switch_prefix) and p.key != switch and not get_value(spec.base, switch):
                raise ConfigError(f"parameters.{p.key}: searched while {switch} is false, so nothing reads it")
        switch = _EXCLUDED_BY.get(p.key)
        if switch and get_value(spec.base, switch):
            raise ConfigError(f"parameters.{p.key}: searched while {switch} is true, so nothing reads it")
        for value in p.edge_values():
            _try(spec.base, {p.key: value}, f"parameters.{p.key}")
    for end in ("low", "high"):  # interactions: every parameter at the same end at once
        values = {p.key: p.edge_values()[0 if end == "low" else -1] for p in spec.params}
        _try(spec.base, values, f"parameters (all at their {end} end together)")
    names = {p.key for p in spec.params}
    for i, point in enumerate(spec.settings.start_with):
        unknown = sorted(set(point) - names)
        if unknown:
            raise ConfigError(f"search.start_with[{i}]: {unknown[0]!r} is not a searched parameter")
        for p in spec.params:
            if p.key in point and not _in_range(p, point[p.key]):
                raise ConfigError(f"search.start_with[{i}].{p.key}={point[p.key]!r}: outside its search range")
        _try(spec.base, point, f"search.start_with[{i}]")
    s = spec.settings
    if s.asha.max_t > spec.base.train.max_epochs:
        raise ConfigError(
            f"search.asha.max_t={s.asha.max_t}: larger than train.max_epochs={spec.base.train.max_epochs}"
        )
    if s.max_concurrent > s.num_trials:
        raise ConfigError(f"search.max_concurrent={s.max_concurrent}: more than num_trials={s.num_trials}")
    devices = next((p.choices for p in spec.params if p.key == "train.device"), (spec.base.train.device,))
    cuda = [d for d in devices if is_cuda_request(str(d))]
    if cuda and s.gpus_per_trial == 0:  # a trial gets a GPU only through Ray's accounting, never around it
        raise ConfigError(f"train.device={cuda[0]!r} needs a GPU, but search.gpus_per_trial is 0: give each "
                          "trial a GPU (gpus_per_trial, --gpus-per-trial) or set train.device to auto or cpu")


def with_settings(spec: SearchSpec, **changes: Any) -> SearchSpec:
    """A copy with some settings replaced (command-line options), validated again."""
    changes = {k: v for k, v in changes.items() if v is not None}
    settings = build_settings({**plain_settings(spec.settings), **changes})
    new = dataclasses.replace(spec, settings=settings)
    validate(new)
    return new


def with_data(spec: SearchSpec, scans: list[str]) -> SearchSpec:
    """A copy whose base config reads ``scans`` (the ``--data`` option)."""
    return dataclasses.replace(spec, base=set_value(spec.base, "data.scans", list(scans)))


# ------------------------------------------------------------------------------------------- helpers
def _load_base(raw: Any, base_dir: Path) -> ExperimentConfig:
    if isinstance(raw, str):
        path = (base_dir / raw).resolve()
        if not path.is_file():
            raise ConfigError(f"base: config file {raw!r} not found (looked at {path})")
        raw = read_yaml_mapping(path)
        where = f"base ({path.name})"
    else:
        where = "base"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a config file path or a mapping, got {raw!r}")
    try:
        return ExperimentConfig.from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


def _parse_param(key: str, raw: Any) -> Param:
    where = f"parameters.{key}"
    field_types(key)  # unknown keys: ConfigError listing the valid ones
    if key in _NOT_SEARCHABLE:
        raise ConfigError(f"{where}: not searchable ({_NOT_SEARCHABLE[key]})")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with type, role and a range or choices")
    check_keys(raw, {"type", "role", "low", "high", "step", "choices"}, where + ".")
    kind, role = raw.get("type"), raw.get("role")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}.type={kind!r}: expected one of {list(DISTRIBUTIONS)}")
    if role not in ROLES:
        raise ConfigError(f"{where}.role={role!r}: expected one of {list(ROLES)}")
    tp = field_types(key)[key]
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list")
        if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
            raise ConfigError(f"{where}.choices: expected scalars (str, number, bool or null)")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}.choices: duplicate values in {choices}")
        for extra in ("low", "high", "step"):
            if extra in raw:
                raise ConfigError(f"{where}.{extra}: not used by a categorical parameter (give choices)")
        return Param(key, kind, role, choices=tuple(choices))
    if "choices" in raw:
        raise ConfigError(f"{where}.choices: only for type categorical")
    numeric = _scalar_type(tp)
    if numeric not in (int, float) or (kind != "int" and numeric is int):
        wanted = "int" if numeric is int else "categorical"
        raise ConfigError(f"{where}.type={kind}: the field is {_type_name(tp)}; use type {wanted}")
    low, high, step = (number(raw.get(n), f"{where}.{n}", kind == "int") for n in ("low", "high", "step"))
    if low is None or high is None:
        raise ConfigError(f"{where}: expected both low and high")
    if low > high:
        raise ConfigError(f"{where}: inverted range low={low} > high={high}")
    if low == high:
        raise ConfigError(f"{where}: empty range low == high == {low}; fix it in overrides instead")
    if kind == "loguniform":
        if low <= 0:
            raise ConfigError(f"{where}.low={low}: loguniform needs low > 0")
        if step is not None:
            raise ConfigError(f"{where}.step: not supported with loguniform")
    if step is not None:
        if step <= 0:
            raise ConfigError(f"{where}.step={step}: expected a value > 0")
        n_steps = (high - low) / step
        if abs(n_steps - round(n_steps)) > 1e-9:
            raise ConfigError(f"{where}: high - low = {high - low} is not a multiple of step={step}")
    return Param(key, kind, role, low=low, high=high, step=step)


def _in_range(p: Param, value: Any) -> bool:
    if p.type == "categorical":
        return any(value == c and type(value) is type(c) for c in p.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return p.low <= value <= p.high


def _scalar_type(tp: Any) -> Any:
    return tp if tp in (int, float, bool, str) else None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _try(base: ExperimentConfig, values: dict[str, Any], where: str) -> None:
    try:
        resolve(base, values)
    except ConfigError as err:
        raise ConfigError(f"{where}: the config rejects {values}: {err}") from err


