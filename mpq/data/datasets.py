"""build_data: the config's `dataset:` section to a DataBundle, dispatching on its name."""
from __future__ import annotations

from .bundle import DataBundle
from .cifar import build_cifar
from .digits import build_digits
from .imagefolder import build_imagefolder
from .synthetic import build_synthetic
from ..errors import InputError

BUILDERS = {
    "digits": build_digits,
    "cifar10": lambda cfg: build_cifar(cfg, "cifar10"),
    "cifar100": lambda cfg: build_cifar(cfg, "cifar100"),
    "imagefolder": build_imagefolder,
    "synthetic": build_synthetic,
}


def build_data(cfg: dict) -> DataBundle:
    """Train and test datasets for cfg['name'], one of BUILDERS."""
    choices = ", ".join(BUILDERS)
    if not isinstance(cfg, dict) or not cfg.get("name"):
        raise InputError(f"dataset.name is required; choose one of {choices}")
    name = str(cfg["name"])
    if name not in BUILDERS:
        raise InputError(f"dataset.name: unknown dataset {name!r}; choose one of {choices}")
    return BUILDERS[name](cfg)
