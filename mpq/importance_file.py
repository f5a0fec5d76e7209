"""Read and write LIMPQ importance files (limpq.md section 4); OMPQ's file uses the same loader.

The files are pickles, and a pickle can run arbitrary code when loaded. The
reference file comes from the internet, so it is read with an unpickler that
refuses every global: the format needs only dicts, lists, strings and numbers,
which pickle builds from opcodes without importing anything.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

from .io import atomic_write_bytes
from .errors import InputError

_DDP_PREFIX = "module."
_KEYS = ("weight", "act", "layer_name")


class UntrustedPickleError(InputError):
    """The pickle tried to load a class or function, which importance files never need."""


class _BuiltinsOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        # Every route to a callable (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) passes
        # through here, so refusing here refuses all code execution.
        raise UntrustedPickleError(
            f"{self._path}: refused to load global '{module}.{name}': "
            "importance files may hold only dicts, lists, strings and numbers"
        )

    def persistent_load(self, pid):
        raise UntrustedPickleError(
            f"{self._path}: refused a persistent id: "
            "importance files may hold only dicts, lists, strings and numbers"
        )


def load_untrusted_pickle(path) -> object:
    """Unpickle a file that may come from anyone, allowing builtin data only."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            return _BuiltinsOnlyUnpickler(f, path).load()
    except UntrustedPickleError:
        raise
    except OSError:
        raise
    except Exception as exc:  # truncated or corrupt data raises many types
        raise InputError(
            f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); "
            "the file is truncated or corrupt, re-create it with extract_importance"
        ) from None


@dataclass
class Importance:
    """Learned step sizes per searchable layer, keyed by candidate bit."""

    names: list[str]
    candidates: list[int]  # descending
    weight: dict[str, dict[int, float]]
    act: dict[str, dict[int, float]]


def _strip_prefix(name: str) -> str:
    return name[len(_DDP_PREFIX):] if name.startswith(_DDP_PREFIX) else name


def _few(items) -> str:
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:3])
    return shown + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")


def _parse_bit(key, where: str) -> int:
    if isinstance(key, bool):
        raise InputError(f"{where}: candidate key {key!r} is not a bit-width")
    if isinstance(key, int):
        return key
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    raise InputError(f"{where}: candidate key {key!r} is not a decimal bit-width string")


def _check_value(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} is {type(value).__name__}, expected a float; re-extract the importance file")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{where} = {value!r}, but step sizes must be finite and > 0; "
                         "re-train or re-extract the indicators")
    return value


def _by_name(table, kind: str, path: str) -> dict[str, dict[int, float]]:
    if not isinstance(table, dict):
        raise InputError(f"{path}: '{kind}' must be a dict of layer name -> {{bit: step}}")
    out: dict[str, dict[int, float]] = {}
    for raw_name, inner in table.items():
        if not isinstance(raw_name, str):
            raise InputError(f"{path}: '{kind}' has a non-string layer name {raw_name!r}")
        name = _strip_prefix(raw_name)
        if name in out:
            raise InputError(f"{path}: '{kind}' lists layer {name!r} twice (with and without 'module.')")
        if not isinstance(inner, dict) or not inner:
            raise InputError(f"{path}: '{kind}'[{raw_name!r}] must be a non-empty dict of bit -> step")
        steps = {}
        for key, value in inner.items():
            where = f"{path}: '{kind}'[{name!r}]"
            bit = _parse_bit(key, where)
            if bit in steps:
                raise InputError(f"{where} has bit {bit} twice")
            steps[bit] = _check_value(value, f"{where}[{key!r}]")
        out[name] = steps
    return out


def _layer_names(raw, path: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise InputError(f"{path}: 'layer_name' must be a list of strings")
    names = [_strip_prefix(n) for n in raw]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"{path}: 'layer_name' repeats {_few(dup)}; each layer must appear once")
    return names


def _check_same_names(names: list[str], other: dict, what: str, path: str) -> None:
    missing = [n for n in names if n not in other]
    extra = [n for n in other if n not in set(names)]
    if missing or extra:
        raise InputError(f"{path}: {what} disagree with 'layer_name' (missing {_few(missing) or 'none'}; "
                         f"unexpected {_few(extra) or 'none'}); re-extract the importance file")


def _check_expected(names: list[str], expected: list[str], path: str) -> None:
    have, want = set(names), set(expected)
    if have != want:
        missing = [n for n in expected if n not in have]
        extra = [n for n in names if n not in want]
        raise InputError(
            f"{path}: layer names do not match the model's searchable layers "
            f"(missing {_few(missing) or 'none'}; unexpected {_few(extra) or 'none'}); "
            "use the importance file extracted for this model"
        )


def _select_candidates(steps_by_kind, names, candidates, path) -> list[int]:
    if candidates is not None:
        wanted = sorted({int(b) for b in candidates}, reverse=True)
        for kind, table in steps_by_kind:
            for name in names:
                absent = [b for b in wanted if b not in table[name]]
                if absent:
                    raise InputError(f"{path}: '{kind}'[{name!r}] has no step for bits {absent}; "
                                     "re-train the indicators with these candidates or drop them from the config")
        return wanted
    first = None
    for kind, table in steps_by_kind:
        for name in names:
            bits = set(table[name])
            if first is None:
                first = (bits, kind, name)
            elif bits != first[0]:
                raise InputError(
                    f"{path}: '{kind}'[{name!r}] has bits {sorted(bits, reverse=True)} but "
                    f"'{first[1]}'[{first[2]!r}] has {sorted(first[0], reverse=True)}; "
                    "every layer needs the same candidates, re-extract the file"
                )
    return sorted(first[0], reverse=True) if first else []


def read_importance(path, expected_names: list[str] | None = None,
                    candidates: list[int] | None = None) -> Importance:
    """Load and validate an importance file so the search can trust every entry."""
    path = str(path)
    data = load_untrusted_pickle(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: top level is {type(data).__name__}, expected a dict with keys {list(_KEYS)}")
    if set(data) != set(_KEYS):
        raise InputError(f"{path}: keys are {sorted(map(str, data))}, expected exactly {list(_KEYS)}; "
                         "metadata belongs in the importance.json sidecar")
    names = _layer_names(data["layer_name"], path)
    weight = _by_name(data["weight"], "weight", path)
    act = _by_name(data["act"], "act", path)
    _check_same_names(names, weight, "'weight' entries", path)
    _check_same_names(names, act, "'act' entries", path)
    if expected_names is not None:
        _check_expected(names, list(expected_names), path)
        names = list(expected_names)
    cands = _select_candidates((("weight", weight), ("act", act)), names, candidates, path)
    return Importance(
        names=names,
        candidates=cands,
        weight={n: {b: weight[n][b] for b in cands} for n in names},
        act={n: {b: act[n][b] for b in cands} for n in names},
    )


def _to_builtins(imp: Importance) -> dict:
    cands = sorted(imp.candidates, reverse=True)
    clean = [_strip_prefix(str(n)) for n in imp.names]  # files never carry the DDP prefix
    if len(set(clean)) != len(clean):
        raise InputError("Importance.names has duplicates; each layer must appear once")
    tables = {}
    for kind, table in (("weight", imp.weight), ("act", imp.act)):
        if set(table) != set(imp.names):
            raise InputError(f"Importance.{kind} keys differ from Importance.names; "
                             "every searchable layer needs one entry")
        out = {}
        for name in imp.names:
            steps = table[name]
            missing = [b for b in cands if b not in steps]
            if missing:
                raise InputError(f"Importance.{kind}[{name!r}] has no step for bits {missing}")
            out[_strip_prefix(str(name))] = {str(int(b)): _check_value(steps[b], f"Importance.{kind}[{name!r}][{b}]")
                              for b in cands}
        tables[kind] = out
    return {"weight": tables["weight"], "act": tables["act"], "layer_name": clean}


def write_importance(path, imp: Importance) -> None:
    """Write atomically, so a crash never leaves a half-written file for the search to read."""
    atomic_write_bytes(path, pickle.dumps(_to_builtins(imp), protocol=4))
