"""The result of build_data: everything the training code needs to know about a dataset."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataBundle:
    """Train and test datasets plus the facts that models and cost accounting depend on.

    `image_size` is the evaluation input size, the one MACs and BitOps are counted at.
    `mean`/`std` are the per-channel normalisation already applied by the loaders.
    """

    train: object
    test: object
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple
    classes: tuple = ()
