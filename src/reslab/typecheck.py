"""Plain data (parsed YAML, a checkpoint's dict) checked against a dataclass's type hints.

    uv run python -c "from reslab.typecheck import build_dataclass; from reslab.config import OptimConfig; build_dataclass(OptimConfig, {'lr': -1})"

:func:`build_dataclass` builds a (nested) dataclass from a dict, converting and checking every
value against its field's annotation: ``int``, ``float`` (finite; an int is accepted), ``bool``,
``str``, ``None``, ``Literal`` choices, unions, ``list[...]``, ``dict`` and ``Annotated`` with a
:class:`Range` of bounds (:data:`PositiveInt`, :data:`Count`, ...). Unknown keys are errors, and
every :class:`~reslab.errors.ConfigError` names the key, the bad value and what is valid. The
schemas themselves are in :mod:`reslab.config` (and ``reslab.detection.train``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from reslab.errors import ConfigError

__all__ = [
    "Count",
    "NonNegativeFloat",
    "PositiveFloat",
    "PositiveInt",
    "Range",
    "build_dataclass",
]


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field: ``low <= value`` (``<`` when ``low_open``), likewise ``high``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, key: str, value: float) -> None:
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (low_ok and high_ok):
            raise ConfigError(f"{key}: {value!r} must be {self}")

    def __str__(self) -> str:
        def number(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {number(self.high)}")
        return " and ".join(parts)


PositiveInt = Annotated[int, Range(0, low_open=True)]
Count = Annotated[int, Range(0)]  # >= 0
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        return f"{_describe(base)} {' '.join(str(e) for e in extras)}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(t) for t in typing.get_args(tp))
    return {type(None): "null", bool: "true/false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _check_value(key: str, value: Any, tp: Any) -> Any:
    """``value`` converted to ``tp`` (an int where a float is expected), or :class:`ConfigError`."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        value = _check_value(key, value, base)
        for extra in extras:
            extra.check(key, value)
        return value
    if origin in (types.UnionType, typing.Union):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not a finite number")
        options = typing.get_args(tp)
        for option in options:
            with contextlib.suppress(ConfigError):
                return _check_value(key, value, option)
        if all(o is bool or typing.get_origin(o) is Literal for o in options):
            choices = [c for o in options for c in typing.get_args(o) or ("true", "false")]
            raise ConfigError(f"{key}: {value!r} is invalid; valid choices: {', '.join(choices)}")
        raise ConfigError(f"{key}: {value!r} is not valid; expected {_describe(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is not bool:
            return value
        raise ConfigError(f"{key}: {value!r} is invalid; valid choices: {_describe(tp)[7:]}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: {value!r} is not a list")
        (item,) = typing.get_args(tp)
        return [_check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: {value!r} is not a mapping")
        return dict(value)
    if tp is type(None):
        if value is None:
            return None
    elif tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not a finite number")
        return float(value)
    elif tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{key}: {value!r} is not a valid {_describe(tp)}")


def build_dataclass(cls: type, values: Any, prefix: str = "") -> Any:
    """``cls`` (a nested dataclass) from plain ``values``, every field checked against its type;
    unknown keys are errors. The result's ``check()`` runs last, when it has one."""
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(values, dict):
        raise ConfigError(
            f"{prefix.rstrip('.') or 'config'}: expected a mapping of {', '.join(names)}"
        )
    hints = typing.get_type_hints(cls, include_extras=True)
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + str(unknown[0])!r}; valid keys under "
            f"'{prefix or '.'}': {', '.join(names)}"
        )
    kwargs = {}
    for name, value in values.items():
        key, tp = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_dataclass(tp, value, f"{key}.")
        else:
            kwargs[name] = _check_value(key, value, tp)
    obj = cls(**kwargs)
    if not prefix and hasattr(obj, "check"):
        obj.check()
    return obj
