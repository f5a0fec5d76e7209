"""Name -> model-builder registry, so configs and checkpoints refer to architectures by name."""
from __future__ import annotations

from typing import Callable

from torch import nn
from ..errors import InputError

ModelBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, ModelBuilder] = {}


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make `builder(num_classes, **kwargs)` available as `create(name, ...)`."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise InputError(f"model name {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return decorate


def unregister(name: str) -> None:
    """Remove a registered name (tests that register a throwaway model clean up with it)."""
    if _BUILDERS.pop(name, None) is None:
        raise InputError(f"model name {name!r} is not registered")


def list_models() -> list[str]:
    """Registered names, sorted, for error messages and CLIs."""
    return sorted(_BUILDERS)


def create(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model; stamps `arch` so checkpoints can name what they hold.

    Every builder must set `signed_inputs` (layers whose input may be negative): activation
    quantizers rely on it, so a missing attribute is a bug, not a default.
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"num_classes must be a positive int, got {num_classes!r}")
    model = builder(num_classes, **kwargs)
    if not isinstance(getattr(model, "signed_inputs", None), frozenset):
        raise RuntimeError(f"builder for {name!r} did not set model.signed_inputs (a frozenset)")
    model.arch = name
    return model
