"""Validation for the SDK's settings classes, which the surface mutates field by field.

The HLAPI assigns fields after construction (`config.parallel_config.tp_size = 2`), so these
classes cannot be frozen; instead every assignment runs its field's check, and slots make a
misspelt field an AttributeError rather than a setting that is silently ignored.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Callable

from kiln.errors import InvalidArgument

Check = Callable[[str, Any], Any]


class Checked:
    """Base of a slotted dataclass whose `_checks` map field names to validators."""

    __slots__ = ()
    _checks: dict[str, Check] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        check = type(self)._checks.get(name)
        if check is not None:
            value = check(f"{type(self).__name__}.{name}", value)
        object.__setattr__(self, name, value)


def integer(low: int | None = None, high: int | None = None, optional: bool = False) -> Check:
    def check(name: str, value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"{name} must be an integer, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise InvalidArgument(f"{name} must be in [{low}, {high}], got {value}")
        return value
    return check


def number(low: float, high: float, optional: bool = False, low_open: bool = False) -> Check:
    def check(name: str, value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise InvalidArgument(f"{name} must be a number, got {value!r}")
        if value < low or value > high or (low_open and value == low):
            raise InvalidArgument(f"{name} must be in {'(' if low_open else '['}{low}, {high}], "
                                  f"got {value}")
        return float(value)
    return check


def boolean(name: str, value):
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be True or False, got {value!r}")
    return value


def one_of(enum_type: type[enum.Enum], optional: bool = False) -> Check:
    def check(name: str, value):
        if value is None and optional:
            return None
        try:
            return value if isinstance(value, enum_type) else enum_type(value)
        except ValueError:
            try:
                return enum_type[value]
            except (KeyError, TypeError):
                allowed = ", ".join(member.name for member in enum_type)
                raise InvalidArgument(f"{name} must be one of {allowed}, got {value!r}") from None
    return check


def instance(cls: type, optional: bool = False) -> Check:
    def check(name: str, value):
        if value is None and optional:
            return None
        if not isinstance(value, cls):
            raise InvalidArgument(f"{name} must be a {cls.__name__}, got {type(value).__name__}")
        return value
    return check


def text(optional: bool = False, max_len: int = 4096) -> Check:
    def check(name: str, value):
        if value is None and optional:
            return None
        if hasattr(value, "__fspath__"):
            value = str(value)
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise InvalidArgument(f"{name} must be a non-empty string of at most {max_len} "
                                  f"characters, got {value!r}")
        return value
    return check
