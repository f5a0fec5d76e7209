"""torchvision classes for isinstance tests that do not import torchvision.

Importing torchvision takes seconds (its ops load torch._dynamo), most jobs never build one of its
models, and a model holding a torchvision block was built after torchvision was loaded: so while
it is not loaded, no model has such a block, and the tests match nothing.
"""
from __future__ import annotations

import importlib
import sys


def loaded_classes(*paths: str) -> tuple[type, ...]:
    """The classes at `paths` ("models.resnet.Bottleneck", under torchvision) if torchvision is
    loaded, else ()."""
    if "torchvision" not in sys.modules:
        return ()
    found = []
    for path in paths:
        module, _, name = path.rpartition(".")
        found.append(getattr(importlib.import_module(f"torchvision.{module}"), name))
    return tuple(found)
