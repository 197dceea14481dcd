"""The search file: a base experiment config, fixed overrides, searched parameters and search settings.

A search file is data, and everything in it is checked before any trial starts: every searched key must
be a real config field (``sensorium.config.field_types``), distributions must fit the field's type, ranges
must be non-empty, a parameter must be read by the configs it applies to (the config classes say which
fields their switches leave unread, and which family a field belongs to), and a config is built at the ends
of every range and at every choice so that ``ExperimentConfig`` itself rejects values (an even kernel, a
gauss_type that does not exist) up front.

The parameters form a tree: a categorical parameter's ``choices`` may be a mapping from each option to the
parameters (distributions) and fixed values that option brings, searched only in trials that choose it.
``search.raytune.tuner`` compiles the tree into an Optuna define-by-run space. Example search file::

    base: tiny.yaml                     # relative to this file, or an inline mapping
    overrides: {train.max_epochs: 6}    # fixed for this study
    parameters:
      train.lr: {type: loguniform, low: 1.0e-3, high: 3.0e-2, role: nuisance}
      model.core.hidden_kern: {type: int, low: 3, high: 9, step: 2, role: scientific}
      model.core.kind:
        type: categorical
        role: scientific
        choices:
          stacked2d: {}                 # no parameters of its own
          se2d:                         # searched only in trials with an SE core
            model.core.se_reduction: {type: categorical, choices: [4, 8], role: nuisance}
      model.readout.kind:
        type: categorical
        role: scientific
        choices:
          gaussian: {model.readout.gauss_type: {type: categorical, choices: [full, isotropic], role: scientific}}
          factorized: {model.shifter.enabled: false}      # a fixed value that comes with this option
    search: {num_trials: 4, max_concurrent: 2, asha: {grace_period: 2, max_t: 6}}

No Ray or Optuna here: ``search.raytune.tuner`` turns a SearchSpec into their objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from search.spec.settings import SearchSettings, build_settings, plain_settings
from sensorium.config import (
    ExperimentConfig, family_of, field_types, get_value, read_yaml_mapping, set_value, set_values,
)
from sensorium.errors import ConfigError, UserError
from sensorium.runtime import is_cuda_request
from sensorium.typed import EXPECTED, build, check_keys, number

SEARCH_FILE = "search.yaml"  # the resolved search, saved in every run folder

_EXHAUSTIVE = 256  # integer ranges up to this many values are checked value by value
# Searching these would let a study "tune" what should be fixed (playbook: keep the best checkpoint instead).
_NOT_SEARCHABLE = {"train.max_epochs": "never tune the number of epochs; early stopping keeps the best one"}
_NUMBER = {EXPECTED: "a number"}  # a range end or step: its errors say "expected a number", not the annotation


@dataclass(frozen=True)
class Entry:
    """One searched parameter as the search file writes it (``parameters.<key>``), read by ``sensorium.typed``
    like every config; ``_parse_param`` then checks it against the config field and makes the ``Param``."""

    type: Literal["uniform", "loguniform", "int", "categorical"]
    role: Literal["scientific", "nuisance"]
    low: float | None = field(default=None, metadata=_NUMBER)
    high: float | None = field(default=None, metadata=_NUMBER)
    step: float | None = field(default=None, metadata=_NUMBER)
    choices: Any = None  # a list of options, or a mapping from each option to its own parameters


@dataclass(frozen=True)
class Branch:
    """What one option of a categorical parameter brings: its own parameters and fixed values."""

    value: Any
    params: tuple[Param, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()  # (dotted key, value) set whenever this option is chosen


@dataclass(frozen=True)
class Param:
    """One searched config key. ``low``/``high`` are inclusive; ``choices`` only for categorical, whose options
    may carry ``branches`` (the options' own parameters and fixed values)."""

    key: str
    type: Literal["uniform", "loguniform", "int", "categorical"]
    role: Literal["scientific", "nuisance"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()
    branches: tuple[Branch, ...] = ()  # empty: a plain list of choices

    def edge_values(self) -> list[Any]:
        """Values a config is built with during validation: range ends (all values of small int ranges)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            values = range(int(self.low), int(self.high) + 1, step)
            return list(values) if len(values) <= _EXHAUSTIVE else [values[0], values[-1]]
        return [self.low, self.high]

    def branch(self, value: Any) -> Branch | None:
        """The branch of option ``value`` (None for a parameter without branches)."""
        return next((b for b in self.branches if _same(b.value, value)), None)

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": self.type, "role": self.role}
        if self.branches:
            entry["choices"] = {
                b.value: {**{q.key: q.to_dict() for q in b.params}, **dict(b.fixed)} for b in self.branches
            }
        elif self.type == "categorical":
            entry["choices"] = list(self.choices)
        else:
            entry.update(low=self.low, high=self.high)
            if self.step is not None:
                entry["step"] = self.step
        return entry


@dataclass(frozen=True)
class SearchSpec:
    """A validated search: ``base`` already has the overrides applied; ``params`` is the top of the tree."""

    base: ExperimentConfig
    params: tuple[Param, ...]
    settings: SearchSettings
    source: str = ""  # the file it came from, for messages

    def resolve(self, values: dict[str, Any]) -> ExperimentConfig:
        """The full experiment config of one trial: ``base`` with the sampled ``values`` set."""
        return resolve(self.base, values)

    def walk(self) -> Iterator[tuple[Param, dict[str, Any]]]:
        """Every parameter of the tree, depth first, with the values its enclosing options set (their choice
        and fixed values): the context in which it is searched."""
        yield from _walk(self.params, {})

    def first_params(self) -> dict[str, Param]:
        """Every searched key once, in tree order, with its first parameter (a key may sit under several
        options, with a range each)."""
        first: dict[str, Param] = {}
        for p, _ in self.walk():
            first.setdefault(p.key, p)
        return first

    def keys(self) -> list[str]:
        """Every searched key once, in tree order."""
        return list(self.first_params())

    def conditional(self) -> bool:
        """Whether some parameter is searched only under some options."""
        return any(p.branches for p in self.params)

    def to_dict(self) -> dict[str, Any]:
        """A self-contained search file (base inlined) that ``parse_search`` reads back."""
        params = {p.key: p.to_dict() for p in self.params}
        return {"base": self.base.to_dict(), "parameters": params, "search": plain_settings(self.settings)}


def resolve(base: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """``base`` with every dotted key in ``values`` set (validated by ExperimentConfig; a component's ``kind``
    first, see ``sensorium.config.set_values``)."""
    return set_values(base, values)


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
    check_keys(raw, ("base", "overrides", "parameters", "search"), "")
    base = _load_base(raw.get("base", {}), base_dir)
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides: expected a mapping of dotted keys to values, got {overrides!r}")
    base = set_values(base, {str(k): v for k, v in overrides.items()})
    params_raw = raw.get("parameters") or {}
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError("parameters: expected a non-empty mapping of dotted config keys to distributions")
    params = tuple(_parse_param(str(k), v, "parameters.") for k, v in params_raw.items())
    settings = build_settings(raw.get("search") or {})
    spec = SearchSpec(base=base, params=params, settings=settings, source=source)
    for p, context in spec.walk():
        for key in (p.key, *context):
            if key in overrides:
                raise ConfigError(f"parameters.{key}: also fixed in overrides; a key is either fixed or searched")
    validate(spec)
    return spec


def validate(spec: SearchSpec) -> None:
    """Check the tree (each value in its context, all lows / all highs together per level) and the settings."""
    _check_structure(spec.base, spec.params, {}, set(), "parameters")
    _check_level(spec.base, spec.params, {}, {}, "parameters")
    for i, point in enumerate(spec.settings.start_with):
        problem = point_problem(spec, point, partial=True)
        if problem:
            raise ConfigError(f"search.start_with[{i}]: {problem}")
        _try(spec.base, _end(spec.params, 0, given=point), f"search.start_with[{i}]")  # the rest at low ends
    s = spec.settings
    if s.asha.max_t > spec.base.train.max_epochs:
        raise ConfigError(
            f"search.asha.max_t={s.asha.max_t}: larger than train.max_epochs={spec.base.train.max_epochs}"
        )
    if s.max_concurrent > s.num_trials:
        raise ConfigError(f"search.max_concurrent={s.max_concurrent}: more than num_trials={s.num_trials}")
    devices = next((p.choices for p, _ in spec.walk() if p.key == "train.device"), (spec.base.train.device,))
    cuda = [d for d in devices if is_cuda_request(str(d))]
    if cuda and s.gpus_per_trial == 0:  # a trial gets a GPU only through Ray's accounting, never around it
        raise ConfigError(f"train.device={cuda[0]!r} needs a GPU, but search.gpus_per_trial is 0: give each "
                          "trial a GPU (gpus_per_trial, --gpus-per-trial) or set train.device to auto or cpu")


def point_problem(spec: SearchSpec, point: dict[str, Any], partial: bool = False) -> str | None:
    """Why ``point`` (searched key -> value) is not a point of ``spec``'s space, or None if it is.

    A key that is not searched under the options the point chooses, or a value outside its range or choices,
    is a problem; with ``partial``, searched keys may be missing (the sampler fills them), otherwise every key
    of the point's branches must be given. Fixed values of the chosen options may be present (trial configs
    hold them) and must then equal them.
    """
    left = dict(point)

    def walk(params: tuple[Param, ...]) -> str | None:
        for p in params:
            if p.key not in left:
                if not partial:
                    return f"{p.key} has no value"
                continue
            value = left.pop(p.key)
            if not _in_range(p, value):
                return f"{p.key}={value!r} is outside its search range"
            branch = p.branch(value)
            if branch is not None:
                for key, fixed in branch.fixed:
                    if key in left and not _same(left.pop(key), fixed):
                        return f"{key} is fixed to {fixed!r} with {p.key}={value!r}"
                problem = walk(branch.params)
                if problem:
                    return problem
        return None

    problem = walk(spec.params)
    if problem:
        return problem
    if left:
        return f"{sorted(left)[0]!r} is not a searched parameter (of the options this point chooses)"
    return None


def active_params(spec: SearchSpec, point: dict[str, Any]) -> list[Param]:
    """The parameters a point of the space samples: the top level and the branches of the options it chooses."""
    out: list[Param] = []

    def walk(params: tuple[Param, ...]) -> None:
        for p in params:
            out.append(p)
            branch = p.branch(point.get(p.key)) if p.key in point else None
            if branch is not None:
                walk(branch.params)

    walk(spec.params)
    return out


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


def _parse_param(key: str, raw: Any, prefix: str) -> Param:
    where = f"{prefix}{key}"
    field_types(key)  # unknown keys: ConfigError listing the valid ones
    if key in _NOT_SEARCHABLE:
        raise ConfigError(f"{where}: not searchable ({_NOT_SEARCHABLE[key]})")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with type, role and a range or choices")
    entry = build(Entry, raw, where + ".")
    kind, role = entry.type, entry.role
    tp = field_types(key)[key]
    if kind == "categorical":
        for extra in ("low", "high", "step"):
            if extra in raw:
                raise ConfigError(f"{where}.{extra}: not used by a categorical parameter (give choices)")
        choices = entry.choices
        branches: tuple[Branch, ...] = ()
        if isinstance(choices, dict) and choices:  # options with their own parameters
            branches = tuple(_parse_branch(key, value, sub, f"{where}.choices.{value}.")
                             for value, sub in choices.items())
            choices = list(choices)
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list, or a mapping from each option to "
                              "its own parameters")
        if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
            raise ConfigError(f"{where}.choices: expected scalars (str, number, bool or null)")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}.choices: duplicate values in {choices}")
        return Param(key, kind, role, choices=tuple(choices), branches=branches)
    if "choices" in raw:
        raise ConfigError(f"{where}.choices: only for type categorical")
    numeric = _scalar_type(tp)
    if numeric not in (int, float) or (kind != "int" and numeric is int):
        wanted = "int" if numeric is int else "categorical"
        raise ConfigError(f"{where}.type={kind}: the field is {_type_name(tp)}; use type {wanted}")
    # the int distribution's ends and step must be whole: 2.0 reads as 2, 2.5 is refused
    low, high, step = (number(getattr(entry, n), f"{where}.{n}", kind == "int") for n in ("low", "high", "step"))
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


def _parse_branch(key: str, value: Any, raw: Any, prefix: str) -> Branch:
    """One option of a categorical parameter: a mapping of dotted keys to distributions (searched with this
    option) or to plain values (fixed with this option); null or {} for none."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a mapping of dotted config keys to distributions or "
                          f"fixed values, got {raw!r}")
    params, fixed = [], []
    for sub_key, sub in raw.items():
        sub_key = str(sub_key)
        if sub_key == key:
            raise ConfigError(f"{prefix}{sub_key}: an option cannot set the parameter it is an option of")
        if isinstance(sub, dict):
            params.append(_parse_param(sub_key, sub, prefix))
        else:
            field_types(sub_key)
            fixed.append((sub_key, sub))
    return Branch(value, tuple(params), tuple(fixed))


def _walk(params: tuple[Param, ...], context: dict[str, Any]) -> Iterator[tuple[Param, dict[str, Any]]]:
    for p in params:
        yield p, context
        for b in p.branches:
            yield from _walk(b.params, {**context, p.key: b.value, **dict(b.fixed)})


def _check_level(
    base: ExperimentConfig, params: tuple[Param, ...], context: dict[str, Any], outer: dict[str, Any], where: str
) -> None:
    """Validate one level of the tree. ``context``: the enclosing options' choices and fixed values; ``outer``:
    the values the enclosing levels' other parameters are tried at (their low ends). Each value is tried alone
    in its context (an option with its own parameters), then every parameter of the level at its low, then its
    high end; then every parameter must be read by the config at the low end."""
    scope = set(outer) | {p.key for p in params}
    ends = [_end(params, i) for i in (0, -1)]
    for p in params:
        name = f"{where}.{p.key}"
        for value in [] if p.branches else p.edge_values():  # an option is tried with its own parameters
            _try(base, {**outer, **context, **ends[0], p.key: value}, name)
        for b in p.branches:
            inner = {**context, p.key: b.value, **dict(b.fixed)}
            siblings = {**outer, **_end(tuple(q for q in params if q.key != p.key), 0)}
            _check_level(base, b.params, inner, siblings, f"{name}.choices.{b.value}")
    at_low, _ = (_try(base, {**outer, **context, **end}, f"{where} (all at their {name} end together)")
                 for end, name in zip(ends, ("low", "high")))  # interactions: the whole level at one end at once
    for p in params:
        reason = at_low.unread_keys().get(p.key)
        if reason and reason not in scope:
            switch = str(get_value(at_low, reason)).lower()
            raise ConfigError(f"{where}.{p.key}: searched while {reason} is {switch}, so nothing reads it")


def _check_structure(
    base: ExperimentConfig, params: tuple[Param, ...], context: dict[str, Any], outer: set[str], where: str
) -> None:
    """No key searched twice on one path of the tree; a field of one family only under that family's option."""
    keys = [p.key for p in params]
    scope = outer | set(keys)
    for p in params:
        name = f"{where}.{p.key}"
        if p.key in context or p.key in outer or keys.count(p.key) > 1:
            raise ConfigError(f"{name}: searched twice on one path of the tree (or also fixed by an option)")
        _check_family(base, p.key, context, scope, name)
        for b in p.branches:
            inner = {**context, p.key: b.value, **dict(b.fixed)}
            _check_structure(base, b.params, inner, scope, f"{name}.choices.{b.value}")


def _end(params: tuple[Param, ...], i: int, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The point of a (sub)tree with every parameter at edge ``i`` (0: low, -1: high; for a choice, its first
    or last option with that option's fixed values and its own parameters at the same end); ``given``: values
    taken instead of the edge (a partial point)."""
    given = given or {}
    point: dict[str, Any] = {}
    for p in params:
        value = given.get(p.key, p.edge_values()[i])
        point[p.key] = value
        branch = p.branch(value)
        if branch is not None:
            point.update({**dict(branch.fixed), **_end(branch.params, i, given)})
    return point


def _check_family(base: ExperimentConfig, key: str, context: dict[str, Any], scope: set[str], where: str) -> None:
    """A field of one family (``model.core.se_reduction``) is searched only where that family is chosen."""
    family = family_of(key)
    if family is None:
        return
    kind_key, kinds = family
    if kind_key not in context and kind_key in scope:  # the family is searched here, but does not enclose it
        raise ConfigError(f"{where}: a field of {kind_key} {' or '.join(kinds)}, which is searched: nest it under "
                          f"that option of {kind_key}")
    kind = context.get(kind_key, get_value(base, kind_key))
    if kind not in kinds:
        raise ConfigError(f"{where}: a field of {kind_key} {' or '.join(kinds)}, but the space never chooses it "
                          f"here ({kind_key} is {kind!r})")


def _same(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b)


def _in_range(p: Param, value: Any) -> bool:
    if p.type == "categorical":
        return any(_same(value, c) for c in p.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return p.low <= value <= p.high


def _scalar_type(tp: Any) -> Any:
    return tp if tp in (int, float, bool, str) else None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _try(base: ExperimentConfig, values: dict[str, Any], where: str) -> ExperimentConfig:
    try:
        return resolve(base, values)
    except ConfigError as err:
        raise ConfigError(f"{where}: the config rejects {values}: {err}") from err


