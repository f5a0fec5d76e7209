"""Reading the `dataset:` config section: required keys and typed values.

Values given on the command line (`--config dataset.image_size=32`) arrive as strings, and a
missing key should be reported by name, so every builder reads its options through here.
"""
from __future__ import annotations
from ..errors import InputError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def required(cfg: dict, key: str, name: str):
    """cfg[key], or a ValueError naming the key and the dataset that needs it."""
    value = cfg.get(key)
    if value is None or value == "":
        raise InputError(f"dataset.{key} is required for dataset {name!r}")
    return value


def integer(cfg: dict, key: str, default: int | None) -> int | None:
    """An int option (None stays None when it is the default)."""
    value = cfg.get(key)
    if value is None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"dataset.{key} must be an integer, got {value!r}") from None
    if number <= 0:
        raise InputError(f"dataset.{key} must be positive, got {number}")
    return number


def boolean(cfg: dict, key: str, default: bool) -> bool:
    """A bool option; accepts true/false/yes/no/1/0 as strings too."""
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise InputError(f"dataset.{key} must be true or false, got {value!r}")


def triple(cfg: dict, key: str, default: tuple) -> tuple:
    """A per-channel (3-value) float option such as mean or std."""
    value = cfg.get(key)
    if value is None:
        return tuple(default)
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3:
        raise InputError(f"dataset.{key} must be a list of 3 numbers, got {value!r}")
    return values
