"""Deterministic subsets and stratified holdout splits of any dataset.

Search scoring needs a holdout carved from the TRAINING data (scoring on the test set would leak
it into the policy), and calibration / BN re-estimation need small fixed subsets. Both must be
the same on every run and machine, so they depend on an explicit seed only.
"""
from __future__ import annotations

import torch
from torch.utils.data import Subset

from .seeding import generator
from ..errors import InputError

_SUBSET_STREAM = 1   # keeps these draws apart from the loaders' (seed, epoch) streams
_HOLDOUT_STREAM = 2


def labels_of(dataset) -> torch.Tensor | None:
    """The dataset's labels as an int64 tensor, or None when it does not expose them."""
    for name in ("labels", "targets"):
        labels = getattr(dataset, name, None)
        if labels is not None:
            return torch.as_tensor(labels, dtype=torch.int64)
    return None


def take(dataset, indices: torch.Tensor):
    """The items at indices, as the dataset's own type when it supports that."""
    if hasattr(dataset, "take"):
        return dataset.take(indices)
    return Subset(dataset, [int(i) for i in indices])


def subset(dataset, n: int, seed: int):
    """n items drawn at random (fixed by seed), kept in their original order.

    Asking for more items than there are gives the whole dataset.
    """
    if n <= 0:
        raise InputError(f"subset size must be positive, got {n}")
    total = len(dataset)
    if n >= total:
        return take(dataset, torch.arange(total))
    chosen = torch.randperm(total, generator=generator(seed, _SUBSET_STREAM))[:n]
    return take(dataset, chosen.sort().values)


def fraction_subset(dataset, fraction: float, batch_size: int, seed: int):
    """A `data_fraction` share of a training set, fixed by seed (docs/methods/data-fraction.md).

    1.0 is the dataset itself (the references train on all of it); below that, at least one
    batch so an epoch never runs empty.
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"data_fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return dataset
    return subset(dataset, max(int(batch_size), int(len(dataset) * fraction)), seed)


def split_holdout(dataset, fraction: float, seed: int):
    """(rest, holdout) with `fraction` of the items held out; stratified if labels are known."""
    rest, holdout = holdout_indices(len(dataset), labels_of(dataset), fraction, seed)
    return take(dataset, rest), take(dataset, holdout)


def holdout_indices(n: int, labels: torch.Tensor | None, fraction: float, seed: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (rest, holdout) indices; each class gets its share of the holdout within one item."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"holdout fraction must be between 0 and 1, got {fraction}")
    count = round(fraction * n)
    if count == 0 or count == n:
        raise InputError(f"a holdout fraction of {fraction} of {n} items leaves one side empty")
    rng = generator(seed, _HOLDOUT_STREAM)
    if labels is None:
        holdout = torch.randperm(n, generator=rng)[:count]
    else:
        holdout = _stratified_pick(labels, count, rng)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[holdout] = True
    return mask.logical_not().nonzero().flatten(), mask.nonzero().flatten()


def _stratified_pick(labels: torch.Tensor, count: int, rng: torch.Generator) -> torch.Tensor:
    """`count` indices with each class represented in proportion (largest-remainder rounding)."""
    classes, sizes = labels.unique(return_counts=True)
    quotas = sizes.double() * count / len(labels)
    alloc = quotas.floor().long()
    missing = count - int(alloc.sum())
    if missing:
        # Largest fractional parts first; a random pre-shuffle breaks ties without bias.
        shuffle = torch.randperm(len(classes), generator=rng)
        frac = (quotas - alloc)[shuffle]
        order = shuffle[torch.sort(frac, descending=True, stable=True).indices]
        alloc[order[:missing]] += 1
    picked = []
    for cls, k in zip(classes.tolist(), alloc.tolist()):
        members = (labels == cls).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=rng)[:k]])
    return torch.cat(picked)
