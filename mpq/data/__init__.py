"""Datasets and loaders: build_data turns the config's `dataset:` section into train/test
datasets; make_loader batches them reproducibly; subset and split_holdout carve fixed pieces."""
from .bundle import DataBundle
from .datasets import build_data
from .loaders import make_loader
from .splits import split_holdout, subset

__all__ = ["DataBundle", "build_data", "make_loader", "split_holdout", "subset"]
