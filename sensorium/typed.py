"""One reader from plain data (YAML, JSON) to frozen dataclasses, used for every typed config of the project.

``build(cls, raw, prefix)`` checks keys and value types against the dataclass's annotations and builds it;
errors are ``ConfigError``s that name the dotted key (``prefix`` + field) and say what was expected. Values are
not coerced beyond int -> float, a whole float -> int, and YAML's ``1e-3`` string -> float. A field without a
default must be given. A field may say in words what it expects (``field(metadata={EXPECTED: "..."})``): its
errors then say that instead of naming the annotation (``auto or a number of GPUs`` for ``float | Literal['auto']``).

Tagged unions: a field annotated with a union of dataclasses that each have a ``kind`` field (one frozen
dataclass per family, e.g. the model's cores) is built as the family its ``kind`` names; a mapping without
``kind`` is the family of the field's default. Example::

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Lr:
    ...     lr: float = 0.1
    ...     steps: tuple[int, ...] = ()
    >>> build(Lr, {"lr": 1, "steps": [3, 5]}, "train.")
    Lr(lr=1.0, steps=(3, 5))
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

from sensorium.errors import ConfigError

KIND = "kind"  # the tag field of a family's config
EXPECTED = "expected"  # dataclass field metadata: what the field expects, in words, for its error messages


def build(cls: type, raw: Any, prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from the mapping ``raw``; ``prefix`` (``"model.core."``) names keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = field_hints(cls)
    check_keys(raw, hints, prefix, family=_family_note(cls, prefix))
    for f in dataclasses.fields(cls):
        if f.name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{f.name}: missing; expected {_expected(f, hints[f.name])}")
    kwargs = {name: _field_value(cls, hints[name], value, f"{prefix}{name}", name) for name, value in raw.items()}
    return cls(**kwargs)


def check_keys(raw: dict[str, Any], allowed: typing.Iterable[str], prefix: str, family: str = "") -> None:
    """The one unknown-key message: names the first unknown key and lists the valid ones here."""
    allowed = list(allowed)
    unknown = sorted(set(map(str, raw)) - set(allowed))
    if unknown:
        raise unknown_key(prefix + unknown[0], [prefix + k for k in allowed], family)


def unknown_key(key: str, valid: typing.Iterable[str], note: str = "") -> ConfigError:
    """The error for an unknown key: names it and lists the valid keys (``note``: which family's keys)."""
    return ConfigError(f"unknown key {key!r}{note}; valid keys here: {', '.join(valid)}")


def field_hints(cls: type) -> dict[str, Any]:
    """name -> resolved annotation of the dataclass's fields (its ClassVars, which are no keys, left out)."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def positive(obj: Any, section: str, *names: str) -> None:
    """ConfigError naming ``section.name`` unless every named field of ``obj`` is > 0."""
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name}={value}: expected a value > 0")


def non_negative(obj: Any, section: str, *names: str) -> None:
    """ConfigError naming ``section.name`` unless every named field of ``obj`` is >= 0."""
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            raise ConfigError(f"{section}.{name}={value}: expected a value >= 0")


def families(tp: Any) -> dict[str, type]:
    """kind -> dataclass of a tagged-union annotation (empty for any other type)."""
    if get_origin(tp) not in (typing.Union, types.UnionType):
        return {}
    options = get_args(tp)
    if not all(dataclasses.is_dataclass(o) and KIND in get_type_hints(o) for o in options):
        return {}
    return {get_args(get_type_hints(o)[KIND])[0]: o for o in options}


def kind_of(cls: type) -> str:
    """The ``kind`` tag of a family's dataclass."""
    return get_args(get_type_hints(cls)[KIND])[0]


def value_of(tp: Any, value: Any, key: str, owner: type | None = None, name: str = "") -> Any:
    """``value`` checked (and minimally converted) against annotation ``tp``; ``key`` names it in errors."""
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key + ".")
    tagged = families(tp)
    if tagged:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kind = value.get(KIND, _default_kind(owner, name, tagged))
        if kind not in tagged:
            raise ConfigError(f"{key}.{KIND}={kind!r}: expected one of {list(tagged)}")
        return build(tagged[kind], value, key + ".")
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp) or isinstance(value, bool) != any(isinstance(a, bool) for a in get_args(tp)):
            raise ConfigError(f"{key}={value!r}: expected one of {list(get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        options = [o for o in get_args(tp) if o is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message
            try:
                return value_of(options[0], value, key)
            except ConfigError as err:
                raise ConfigError(f"{err} (or null)") from None
        for option in get_args(tp):
            if option is type(None):
                continue
            try:
                return value_of(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r}: expected {_type_name(tp)}")
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            value = [value] if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list")
        item_tp = get_args(tp)[0]
        return tuple(value_of(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if tp in (int, float):
        return number(value, key, integer=tp is int)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


def number(value: Any, key: str, integer: bool) -> Any:
    """``value`` as a finite int/float (YAML's '1e-3' strings included), or None for None; else ConfigError."""
    if value is None:
        return None
    if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected {'an integer' if integer else 'a number'}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r}: expected {'an integer' if integer else 'a number'}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value!r}: expected a finite number")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return int(value)
    return float(value)


def plain(obj: Any) -> Any:
    """Nested plain data of a dataclass (tuples become lists) that YAML and JSON can hold."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------- helpers
def _field_value(cls: type, tp: Any, value: Any, key: str, name: str) -> Any:
    """``value_of`` for field ``name`` of ``cls``; a field that says what it expects (``EXPECTED``) says so."""
    text = next(f.metadata.get(EXPECTED) for f in dataclasses.fields(cls) if f.name == name)
    try:
        return value_of(tp, value, key, cls, name)
    except ConfigError:
        if text is None:
            raise
        raise ConfigError(f"{key}={value!r}: expected {text}") from None


def _expected(f: dataclasses.Field, tp: Any) -> str:
    """What a field expects, in words, for the message of a missing one."""
    if EXPECTED in f.metadata:
        return f.metadata[EXPECTED]
    if get_origin(tp) is Literal:
        return f"one of {list(get_args(tp))}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, _type_name(tp))


def _default_kind(owner: type | None, name: str, tagged: dict[str, type]) -> str:
    if owner is not None:
        f = next((f for f in dataclasses.fields(owner) if f.name == name), None)
        if f is not None and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            return getattr(f.default_factory(), KIND)  # type: ignore[misc]
    return next(iter(tagged))


def _family_note(cls: type, prefix: str) -> str:
    """' of model.core.kind='stacked2d''-style note for the unknown-key message of a family's config."""
    hints = get_type_hints(cls)
    if KIND not in hints or get_origin(hints[KIND]) is not Literal:
        return ""
    return f" of {prefix}{KIND}={kind_of(cls)!r}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")
