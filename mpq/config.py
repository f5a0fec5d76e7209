"""Config validation against the workflow's JSON Schema, with defaults and one-line errors.

Snakemake's own validator reports a multi-line jsonschema dump; users need one line that names
the key and says what is wrong. Values given on the command line (`--config a.b=3`) may arrive as
strings, so scalars are coerced to the type the schema asks for before validation.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema

from .io import read_yaml
from .registry import SEARCH_METHODS
from .errors import ConfigError, InputError  # noqa: F401  (ConfigError: raised here, imported from here)


def _path(parts) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def _coerce(value, schema: dict):
    types = schema.get("type")
    types = [types] if isinstance(types, str) else (types or [])
    if isinstance(value, str):
        low = value.strip().lower()
        if "boolean" in types and low in ("true", "false"):
            return low == "true"
        if "null" in types and low in ("null", "none", "~"):
            return None
        for t, conv in (("integer", int), ("number", float)):
            if t in types:
                try:
                    return conv(value)
                except ValueError:
                    pass
    return value


def resolve_ref(node: dict, root: dict) -> dict:
    """`node` with its local `$ref` ("#/$defs/bitpair") replaced by the target, its own keys on top."""
    if "$ref" not in node:
        return node
    target = root
    for part in node["$ref"].split("/")[1:]:
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _apply_defaults_and_coerce(node, schema: dict, root: dict):
    """Fill `default`s of object properties and coerce string scalars, recursively."""
    schema = resolve_ref(schema, root)
    if isinstance(node, dict) and schema.get("type") in ("object", None):
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key not in node and "default" in sub:
                node[key] = copy.deepcopy(sub["default"])
            if key in node:
                node[key] = _apply_defaults_and_coerce(node[key], sub, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in node:
                if key not in props:
                    node[key] = _apply_defaults_and_coerce(node[key], extra, root)
        for rule in schema.get("allOf", ()):   # defaults that depend on another key: if / then / else
            if "if" in rule:
                branch = rule.get("then" if _matches(node, rule["if"]) else "else")
                if branch:
                    node = _apply_defaults_and_coerce(node, {"type": "object", **branch}, root)
        return node
    if isinstance(node, list) and isinstance(schema.get("items"), dict):
        return [_apply_defaults_and_coerce(v, schema["items"], root) for v in node]
    return _coerce(node, schema)


def _matches(node, schema: dict) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(node)


def _one_line(error: jsonschema.ValidationError) -> str:
    where = _path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(f"{_path(list(error.absolute_path) + [k])}" for k in extra)
        return f"unknown key {keys}; allowed here: {', '.join(allowed)}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "not" and list(error.validator_value) == ["required"]:
        keys = error.validator_value["required"]   # keys that may not be given together
        return f"{where}: {' and '.join(keys)} exclude each other; keep one of them"
    if error.validator in ("oneOf", "anyOf"):
        hint = error.schema.get("description", "")
        return f"{where}: value {error.instance!r} is not valid here" + (f" ({hint})" if hint else "")
    return f"{where}: {error.message}"


def check_yaml_syntax(path) -> None:
    """A config file that is not valid YAML, refused with its file, line and column (Snakemake's
    own message names neither); a missing file is left to Snakemake."""
    if Path(path).is_file():
        try:
            read_yaml(path, "a YAML config file")
        except ValueError as e:
            raise ConfigError(f"config error: {e}") from None


SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml"


def load_schema() -> dict:
    return read_yaml(SCHEMA_PATH, "the config schema")


@functools.lru_cache(maxsize=1)
def _cached_schema() -> dict:
    """The schema section_keys and section_defaults read (they copy what they return)."""
    return load_schema()


def schema_section(schema: dict, path: str) -> dict:
    """The schema of the config section at `path` ("importance.rfquant", "finetune.*")."""
    node = schema
    for part in path.split("."):
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    return resolve_ref(node, schema)


def section_keys(path: str) -> set[str]:
    """The keys the schema allows in the config section at `path`."""
    return set(schema_section(_cached_schema(), path)["properties"])


def section_defaults(path: str, given: dict | None = None) -> dict:
    """`given` with the schema's defaults of the config section at `path` filled in, e.g.
    section_defaults("importance.rfquant"), section_defaults("finetune.*", {"method": "ptq"}):
    the one place the library and its tests take defaults from (`*` is any name)."""
    schema = _cached_schema()
    return _apply_defaults_and_coerce(copy.deepcopy(given or {}), schema_section(schema, path), schema)


# Where each whole config section a stage's --spec carries sits in the config. Not here: the
# OMPQ feature pass gets only the keys its features depend on (so choosing a search mode reruns no
# feature pass), and a `none` recipe (the subnet rule) only its method and epochs.
SPEC_SECTIONS = {"dataset": "dataset", "model": "model", "pretrain": "pretrain", "quant": "quant",
                 "limpq": "importance.limpq", "rfquant": "importance.rfquant", "recipe": "finetune.*"}


def _carried_whole(key: str, spec: dict) -> bool:
    return isinstance(spec.get(key), dict) and not (key == "recipe" and spec[key].get("method") == "none")


def resolve_spec(spec: dict) -> dict:
    """A hand-written --spec with the schema's defaults filled into the sections it carries, as the
    workflow resolves them; for running a stage by hand (the stages themselves fill in nothing)."""
    return {key: section_defaults(SPEC_SECTIONS[key], value) if key in SPEC_SECTIONS and _carried_whole(key, spec)
            else value for key, value in spec.items()}


def spec_missing_keys(spec: dict) -> list[str]:
    """The keys with a schema default that a stage's --spec leaves out of the config sections it
    carries ("dataset.workers"): stages fill in nothing, so a default changed in the schema reruns
    the rules whose specs carry it."""
    filled = resolve_spec(spec)
    return [f"{key}.{k}" for key in SPEC_SECTIONS if _carried_whole(key, spec)
            for k in filled[key] if k not in spec[key]]


def validate_config(config: dict, schema: dict) -> dict:
    """Return a validated copy of `config` with defaults filled in; raise ConfigError otherwise."""
    cfg = _apply_defaults_and_coerce(copy.deepcopy(config), schema, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(list(e.absolute_path)), str(e.message)))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(f"config error: {_one_line(best)}")
    if "policies" in cfg:   # points are policies the schema's per-policy defaults apply to
        from .sweeps import expand_sweeps

        points = expand_sweeps(cfg["policies"])
        if points != cfg["policies"]:
            return validate_config({**cfg, "policies": points}, schema)
    _check_policies(cfg)
    return cfg




def _check_policies(cfg: dict) -> None:
    """Cross-key rules a JSON Schema cannot express well."""
    recipes = cfg.get("finetune", {})
    for name, pol in cfg.get("policies", {}).items():
        where = f"policies.{name}"
        method = SEARCH_METHODS[pol["search"]]
        if not method.budgets and "bits" not in pol:
            raise ConfigError(f"config error: {where}: search {method.name!r} needs bits: [w, a]")
        if not method.budgets and "budget" in pol:   # ignored, yet summary.csv would show it
            meeting = ", ".join(m.name for m in SEARCH_METHODS.values() if m.budgets)
            raise ConfigError(f"config error: {where}: search {method.name!r} ignores budget (its bits are bits: "
                              f"[w, a]); remove budget, or use a search that meets it ({meeting})")
        if method.budgets:
            if not pol.get("budget"):
                raise ConfigError(f"config error: {where}: search {method.name!r} needs a budget "
                                  f"({' or '.join(method.budgets)})")
            if "importance" not in pol:
                raise ConfigError(f"config error: {where}: search {method.name!r} needs importance")
            foreign = sorted(set(pol["budget"]) - set(method.budgets))
            if foreign:
                others = ", ".join(m.name for m in SEARCH_METHODS.values() if set(foreign) <= set(m.budgets))
                raise ConfigError(f"config error: {where}.budget: search {method.name!r} meets "
                                  f"{' or '.join(method.budgets)} only, not {', '.join(foreign)}; "
                                  f"use search {others or 'another'} for that budget")
            wanted = method.importance
            if pol["importance"] not in wanted:
                raise ConfigError(f"config error: {where}: search {pol['search']!r} works on importance "
                                  f"{' or '.join(wanted)}, not {pol['importance']!r}")
        recipe = pol.get("finetune", "none")
        budget = pol.get("budget") or {}
        if "accuracy_drop" in budget and (len(budget) > 1 or recipe != "none"):
            raise ConfigError(f"config error: {where}.budget.accuracy_drop: an accuracy target stands alone (no "
                              f"other budget key) and is met without retraining: set finetune: none")
        if pol.get("front_job") and not (pol["search"] == "greedy" and recipe == "none" and "front" in pol):
            raise ConfigError(f"config error: {where}.front_job: only an RFQuant point without retraining (search "
                              f"greedy, finetune none, in a front: a sweep's point) runs in a front job; remove it")
        if recipe != "none" and recipe not in recipes:
            raise ConfigError(f"config error: {where}.finetune: recipe {recipe!r} is not defined under "
                              f"finetune: (have {', '.join(sorted(recipes)) or 'none'})")
