"""Field checks shared by the typed configurations (preprocessing, network, manifest).

Every check raises :class:`ConfigError` naming the field as ``section.field`` and what it must be, so a
bad ``bundle.json`` gives one clear line (``from_dict`` prefixes the file). JSON brings its own traps,
which these checks refuse: ``true`` is an ``int`` to Python, ``1e999`` parses to infinity, ``NaN`` is
accepted by :mod:`json`, and a 5000-digit integer cannot even be printed on Python 3.11+.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .errors import ConfigError


def shown(value: Any) -> str:
    """A short, always printable rendering of a rejected value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # e.g. an int past the digit limit inside a container
        text = f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number (JSON int or float, not a bool)."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def check_int(where: str, value: Any, low: int, high: int) -> int:
    if not (is_int(value) and low <= value <= high):
        raise ConfigError(f"{where} must be an integer from {low} to {high} (got {shown(value)})")
    return value


def check_number(where: str, value: Any, low: float, high: float) -> float:
    if not (is_number(value) and low <= value <= high):
        raise ConfigError(f"{where} must be a finite number from {low} to {high} (got {shown(value)})")
    return float(value)


def check_bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false (got {shown(value)})")
    return value


def check_choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    if not (isinstance(value, str) and value in choices):
        raise ConfigError(f"{where} must be one of {', '.join(choices)} (got {shown(value)})")
    return value


def check_text(where: str, value: Any, *, max_length: int = 10_000) -> str:
    if not (isinstance(value, str) and len(value) <= max_length):
        raise ConfigError(f"{where} must be a text of at most {max_length} characters (got {shown(value)})")
    return value


def check_int_tuple(where: str, value: Any, lengths: range, low: int, high: int) -> tuple[int, ...]:
    """A JSON list (or tuple) of integers in ``low..high`` whose length is in ``lengths``."""
    if not (
        isinstance(value, (list, tuple))
        and len(value) in lengths
        and all(is_int(v) and low <= v <= high for v in value)
    ):
        count = _count(lengths)
        raise ConfigError(
            f"{where} must be a list of {count} integers from {low} to {high} (got {shown(value)})"
        )
    return tuple(value)


def check_number_tuple(where: str, value: Any, lengths: range, low: float, high: float) -> tuple[float, ...]:
    """A JSON list (or tuple) of finite numbers in ``low..high`` whose length is in ``lengths``."""
    if not (
        isinstance(value, (list, tuple))
        and len(value) in lengths
        and all(is_number(v) and low <= v <= high for v in value)
    ):
        raise ConfigError(
            f"{where} must be a list of {_count(lengths)} finite numbers from {low} to {high} (got {shown(value)})"
        )
    return tuple(float(v) for v in value)


def _count(lengths: range) -> str:
    first, last = lengths[0], lengths[-1]
    return str(first) if first == last else f"{first} to {last}"


def check_mapping(where: str, value: Any, allowed: tuple[str, ...] | None = None) -> dict:
    """A JSON object, optionally holding only ``allowed`` keys (so a misspelt key is not silently ignored)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a JSON object (got {shown(value)})")
    if allowed is not None:
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise ConfigError(
                f"{where} has unknown key(s) {', '.join(unknown[:5])} (allowed: {', '.join(allowed)})"
            )
    return dict(value)


def require(where: str, data: Mapping, key: str) -> Any:
    """``data[key]``; ConfigError naming ``where.key`` (just ``key`` at the top level, ``where`` empty)."""
    if key not in data:
        raise ConfigError(f"{where}.{key} is missing" if where else f"{key} is missing")
    return data[key]


@contextmanager
def in_source(source: str | None) -> Iterator[None]:
    """Prefix every ConfigError raised inside with the file (or other source) it came from."""
    try:
        yield
    except ConfigError as exc:
        if not source or str(exc).startswith(f"{source}: "):
            raise
        raise ConfigError(f"{source}: {exc}") from None
