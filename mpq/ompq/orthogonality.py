"""OMPQ importance (docs/methods/ompq.md): unit features, their CKA matrix, orthogonality.

One no-grad forward pass of a few training images through the FP32 model (BN on the batch's
own statistics by default, as in the reference) gives each unit's feature; linear CKA between
every pair is the ORM matrix M, and a unit's orthogonality is gamma_i = sum_{j != i} M_ij.
The search turns gamma into theta = exp(-beta * gamma), so beta is not stored and changing it
reruns only the search.

`ompq/importance.pkl` is a pickle of builtins only (read back with a loader that refuses code):

    {'unit_name':      [str, ...],             # network order
     'unit_layers':    {unit: [layer names]},  # conv/linear layers whose weight bits follow it
     'unit_params':    {unit: int},            # weight elements of those layers
     'unit_bn_params': {unit: int},            # 2 * C_out of their BNs (ompq.count_bn_params)
     'orm':            [[float] * L] * L,      # linear CKA, symmetric, unit diagonal
     'gamma':          {unit: float},          # row sums of orm minus the diagonal
     'mode':           'qat' | 'ptq',          # 'ptq' also holds the stem and classifier units
     'samples':        int}                    # images in the forward pass

A 'ptq' file serves both modes: M_ij depends on units i and j only, so dropping the stem and
classifier rows and columns gives exactly the 'qat' matrix, and gamma is recomputed from it.
"""
from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..io import atomic_write_bytes
from ..probe import check_bn_mode, probe_forward
from ..quant.convert import conv_bn_pairs
from .cka import centered_gram, orm_matrix
from .units import check_mode, ompq_units
from ..importance_file import load_untrusted_pickle
from ..errors import InputError

KEYS = ("unit_name", "unit_layers", "unit_params", "unit_bn_params", "orm", "gamma", "mode", "samples")
OPTIONAL_KEYS = ("unit_bn_params",)   # files from other producers may lack it
SYMMETRY_TOL = 1e-9
GAMMA_TOL = 1e-6


@dataclass
class OmpqImportance:
    units: list[str]
    unit_layers: dict[str, list[str]]
    unit_params: dict[str, int]
    unit_bn_params: dict[str, int]
    orm: np.ndarray
    mode: str
    samples: int

    @property
    def gamma(self) -> np.ndarray:
        return unit_gammas(self.orm)

    def theta(self, beta: float) -> np.ndarray:
        return importance_theta(self.gamma, beta)

    def without(self, layers: set[str]) -> "OmpqImportance":
        """The 'qat' view of a 'ptq' file: drop every unit that holds one of `layers`."""
        keep = [i for i, u in enumerate(self.units) if not layers & set(self.unit_layers[u])]
        units = [self.units[i] for i in keep]
        return replace(self, units=units, orm=self.orm[np.ix_(keep, keep)], mode="qat",
                       unit_layers={u: self.unit_layers[u] for u in units},
                       unit_params={u: self.unit_params[u] for u in units},
                       unit_bn_params={u: self.unit_bn_params[u] for u in units})


def unit_gammas(orm: np.ndarray) -> np.ndarray:
    """gamma_i = sum over j != i of M_ij: a unit's total similarity to all the others."""
    return orm.sum(1) - np.diag(orm)


def importance_theta(gamma, beta: float) -> np.ndarray:
    """theta_i = exp(-beta * (gamma_i - min gamma)); the shift (the LP ignores a common factor)
    keeps the largest theta at 1 where exp(-beta * gamma) would underflow."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise InputError(f"ompq beta must be a finite number >= 0, got {beta!r}")
    gamma = np.asarray(gamma, dtype=np.float64)
    return np.exp(-float(beta) * (gamma - gamma.min()))


# ------------------------------------------------------------------------------- computation

def _bn_params(model: nn.Module, layers, bn_of: dict[str, str]) -> int:
    return sum(2 * model.get_submodule(bn_of[n]).num_features for n in layers if n in bn_of)


@torch.no_grad()
def compute_ompq_importance(model: nn.Module, images: torch.Tensor, mode: str = "ptq",
                            bn_mode: str = "train") -> OmpqImportance:
    """Centred Gram matrix of every unit's feature from one pass, then the ORM matrix.

    bn_mode 'train' (the reference's, which never calls eval()): BN uses the statistics of
    `images`; 'eval': the running statistics. Neither changes the model (docs/methods/ompq.md).
    """
    check_bn_mode(bn_mode)
    units = ompq_units(model, check_mode(mode))
    if images.shape[0] < 2:
        raise InputError(f"OMPQ needs at least 2 images to compare features, got {images.shape[0]}")
    grams: dict[str, torch.Tensor] = {}

    def record(unit, tensor):
        if unit.name in grams:
            raise RuntimeError(f"module {unit.source} ran twice in one forward; unit {unit.name}'s "
                               "feature is ambiguous")
        grams[unit.name] = centered_gram(tensor)

    hooks = []
    for unit in units:
        module = model.get_submodule(unit.source)
        if unit.port == "input":
            hooks.append(module.register_forward_pre_hook(lambda m, inp, u=unit: record(u, inp[0])))
        else:
            hooks.append(module.register_forward_hook(lambda m, inp, out, u=unit: record(u, out)))
    probe_forward(model, images, hooks, bn_mode=bn_mode)
    names = [u.name for u in units]
    bn_of = conv_bn_pairs(model, images.shape[-1], images.shape[1])
    return OmpqImportance(
        units=names,
        unit_layers={u.name: list(u.layers) for u in units},
        unit_params={u.name: sum(model.get_submodule(n).weight.numel() for n in u.layers) for u in units},
        unit_bn_params={u.name: _bn_params(model, u.layers, bn_of) for u in units},
        orm=orm_matrix([grams[n] for n in names], names), mode=mode, samples=int(images.shape[0]))


# -------------------------------------------------------------------------------------- file

def to_builtins(imp: OmpqImportance) -> dict:
    gamma = imp.gamma
    return {"unit_name": list(imp.units),
            "unit_layers": {u: list(imp.unit_layers[u]) for u in imp.units},
            "unit_params": {u: int(imp.unit_params[u]) for u in imp.units},
            "unit_bn_params": {u: int(imp.unit_bn_params[u]) for u in imp.units},
            "orm": [[float(v) for v in row] for row in imp.orm],
            "gamma": {u: float(g) for u, g in zip(imp.units, gamma)},
            "mode": imp.mode, "samples": int(imp.samples)}


def write_ompq_importance(path, imp: OmpqImportance) -> None:
    atomic_write_bytes(path, pickle.dumps(to_builtins(imp), protocol=4))


def _fail(path, what: str) -> None:
    raise InputError(f"{path}: {what}; recompute it with the ompq_importance stage")


def _count(value, path, where, minimum) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(path, f"{where} must be an int >= {minimum}, got {value!r}")
    return value


def _per_unit(data, key, units, path) -> dict:
    table = data[key]
    if not isinstance(table, dict) or list(table) != units:
        _fail(path, f"'{key}' must map every unit of 'unit_name', in the same order")
    return table


def _orm(raw, n: int, path) -> np.ndarray:
    if not isinstance(raw, list) or len(raw) != n or any(not isinstance(r, list) or len(r) != n for r in raw):
        _fail(path, f"'orm' must be a {n} x {n} list of lists")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for r in raw for v in r):
        _fail(path, "'orm' must hold numbers only")
    orm = np.array(raw, dtype=np.float64)
    if not np.isfinite(orm).all() or orm.min() < -SYMMETRY_TOL or orm.max() > 1 + SYMMETRY_TOL:
        _fail(path, "'orm' values must be finite and in [0, 1]")
    if np.abs(orm - orm.T).max() > SYMMETRY_TOL or np.abs(np.diag(orm) - 1).max() > SYMMETRY_TOL:
        _fail(path, "'orm' must be symmetric with a unit diagonal")
    return orm


def parse_ompq_importance(data, path="importance.pkl") -> OmpqImportance:
    """Check the structure of an unpickled file (not yet against a model)."""
    if not isinstance(data, dict):
        _fail(path, f"top level is {type(data).__name__}, expected a dict")
    missing = [k for k in KEYS if k not in data and k not in OPTIONAL_KEYS]
    unknown = sorted(str(k) for k in data if k not in KEYS)
    if missing or unknown:
        _fail(path, f"keys missing {missing}, unexpected {unknown}")
    units = data["unit_name"]
    if not isinstance(units, list) or not units or not all(isinstance(u, str) for u in units) \
            or len(set(units)) != len(units):
        _fail(path, "'unit_name' must be a non-empty list of distinct strings")
    layers = _per_unit(data, "unit_layers", units, path)
    if any(not isinstance(v, list) or not v or not all(isinstance(n, str) for n in v) for v in layers.values()):
        _fail(path, "'unit_layers' values must be non-empty lists of layer names")
    params = {u: _count(v, path, f"unit_params[{u!r}]", 1)
              for u, v in _per_unit(data, "unit_params", units, path).items()}
    bn = {u: 0 for u in units}
    if "unit_bn_params" in data:
        bn = {u: _count(v, path, f"unit_bn_params[{u!r}]", 0)
              for u, v in _per_unit(data, "unit_bn_params", units, path).items()}
    orm = _orm(data["orm"], len(units), path)
    gamma = _per_unit(data, "gamma", units, path)
    stored = [gamma[u] for u in units]
    if any(isinstance(g, bool) or not isinstance(g, (int, float)) for g in stored) \
            or np.abs(np.array(stored, dtype=np.float64) - unit_gammas(orm)).max() > GAMMA_TOL:
        _fail(path, "'gamma' disagrees with the row sums of 'orm'")
    if data["mode"] not in ("qat", "ptq"):
        _fail(path, f"'mode' is {data['mode']!r}, expected 'qat' or 'ptq'")
    samples = _count(data["samples"], path, "'samples'", 2)
    return OmpqImportance(list(units), {u: list(v) for u, v in layers.items()}, params, bn, orm,
                          data["mode"], samples)


def check_against_model(imp: OmpqImportance, cost, path="importance.pkl") -> None:
    """Units must cover the expected layers once each, in network order, with their sizes."""
    order = [layer.name for layer in cost.all_layers]
    if imp.mode == "qat":
        order = order[1:-1]
    params = {layer.name: layer.params for layer in cost.all_layers}
    covered = [n for u in imp.units for n in imp.unit_layers[u]]
    if sorted(covered) != sorted(order):
        extra = sorted(set(covered) - set(order))[:3]
        absent = sorted(set(order) - set(covered))[:3]
        raise InputError(f"{path}: units do not cover this model's {imp.mode}-mode layers once each "
                         f"(missing {absent}, unexpected {extra}); use the file computed for this model")
    firsts = [min(order.index(n) for n in imp.unit_layers[u]) for u in imp.units]
    if firsts != sorted(firsts):
        raise InputError(f"{path}: units are not in network order; recompute the importance file")
    for u in imp.units:
        if imp.unit_params[u] != sum(params[n] for n in imp.unit_layers[u]):
            raise InputError(f"{path}: unit {u!r} has {imp.unit_params[u]} weights but its layers have "
                             f"{sum(params[n] for n in imp.unit_layers[u])} in this model; use the file "
                             "computed for this model")


def read_ompq_importance(path, cost, mode: str) -> OmpqImportance:
    """Load, validate against the model's CostModel and give the view for `mode`."""
    imp = parse_ompq_importance(load_untrusted_pickle(path), path)
    if check_mode(mode) == "ptq" and imp.mode == "qat":
        raise InputError(f"{path}: holds 'qat' units only, but mode 'ptq' needs the stem and classifier "
                         "units; recompute it with the ompq_importance stage")
    check_against_model(imp, cost, path)
    if mode == "qat" and imp.mode == "ptq":
        imp = imp.without({cost.stem.name, cost.classifier.name})
    return imp
