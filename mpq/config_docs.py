"""The key tables of config/README.md, generated from the schema (its types, defaults, conditional
defaults and descriptions), so a default is written once.

    python -m mpq.config_docs            # exit 1 naming the stale tables if the README differs
    python -m mpq.config_docs --write    # rewrite the tables between the README's markers

A table sits between `<!-- keys: <section> -->` and `<!-- /keys -->`; `<section>` is a schema
path as `mpq.config.section_defaults` takes it (`dataset`, `finetune.*`), or `top` for the
top-level scalars.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .config import load_schema, resolve_ref, schema_section
from .io import atomic_write_text

README = Path(__file__).resolve().parents[1] / "config" / "README.md"
BLOCK = re.compile(r"(<!-- keys: (?P<section>[\w.*]+) -->\n)(?P<table>.*?)(<!-- /keys -->)", re.S)
TYPE_NAMES = {"integer": "int", "number": "float", "boolean": "bool", "string": "string", "object": "map",
              "null": "null"}


def section_node(schema: dict, section: str) -> dict:
    if section == "top":
        return {"properties": {k: v for k, v in schema["properties"].items() if v.get("type") != "object"},
                "required": schema.get("required", [])}
    return schema_section(schema, section)


def _value(value) -> str:
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value))   # 2.5e-05 -> 2.5e-5
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value).replace('"', "") if not isinstance(value, str) else value


def type_of(node: dict, schema: dict | None = None) -> str:
    if "anyOf" in node:   # e.g. a budget: one value, a list of them, or a sweep
        alternatives = [resolve_ref(alt, schema) if schema else alt for alt in node["anyOf"]]
        return " or ".join(dict.fromkeys(alt.get("title") or type_of(alt, schema) for alt in alternatives))
    if "enum" in node:
        return " \\| ".join(_value(v) for v in node["enum"])
    kinds = node.get("type", "")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    names = []
    for kind in kinds:
        if kind == "array":
            items = node.get("items", {})
            items = resolve_ref(items, schema) if schema else items
            item = TYPE_NAMES.get(items.get("type"), "value")
            if node.get("minItems") == node.get("maxItems") == 2:
                names.append(f"[{item}, {item}]")
            else:
                bounds = f" ({items['minimum']}–{items['maximum']})" if "minimum" in items and "maximum" in items else ""
                names.append(f"list of {item}{bounds}")
        elif kind:
            names.append(TYPE_NAMES.get(kind, kind))
    return " or ".join(names)


def _condition(rule_if: dict) -> str:
    parts = []
    for key, test in rule_if.get("properties", {}).items():
        if "const" in test:
            parts.append(f"`{key}` {_value(test['const'])}")
        elif "enum" in test:
            parts.append(f"`{key}` {' or '.join(_value(v) for v in test['enum'])}")
        else:
            parts.append(f"`{key}` given")
    return " and ".join(parts)


def default_of(key: str, node: dict, section: dict) -> str:
    """The default as a reader needs it: the value, the value per condition (allOf if/then/else),
    `required`, or unset."""
    if "default" in node:
        return _value(node["default"])
    if key in section.get("required", ()):
        return "required"
    cases = []
    for rule in section.get("allOf", ()):
        then = rule.get("then", {}).get("properties", {}).get(key, {})
        other = rule.get("else", {}).get("properties", {}).get(key, {})
        if "default" in then:
            cases.append(f"{_value(then['default'])} if {_condition(rule['if'])}")
        if "default" in other:
            cases.append(f"{_value(other['default'])} otherwise")
    return ", ".join(cases) if cases else "unset"


def rows(schema: dict, section: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every key of `section`, nested objects flattened
    (`fixed_layers.first`)."""
    found = []

    def walk(node: dict, prefix: str):
        for key, sub in node.get("properties", {}).items():
            sub = resolve_ref(sub, schema)
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub, f"{prefix}{key}.")
                continue
            found.append((f"`{prefix}{key}`", type_of(sub, schema), default_of(key, sub, node),
                          sub.get("description", "").replace("|", "\\|")))

    walk(section_node(schema, section), "")
    return found


def table(schema: dict, section: str) -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| {key} | {kind} | {default} | {meaning} |" for key, kind, default, meaning in rows(schema, section)]
    return "\n".join(lines) + "\n"


def render(text: str, schema: dict) -> str:
    """`text` with every marked table regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + table(schema, m.group("section")) + m.group(4), text)


def stale_sections(text: str, schema: dict) -> list[str]:
    return [m.group("section") for m in BLOCK.finditer(text) if m.group("table") != table(schema, m.group("section"))]


def undocumented_keys(schema: dict, sections: list[str]) -> list[str]:
    return [f"{section}: {key}" for section in sections for key, _, _, meaning in rows(schema, section) if not meaning]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite the tables instead of checking them")
    ap.add_argument("--readme", type=Path, default=README, help="the file with the marked tables")
    args = ap.parse_args(argv)
    schema, text = load_schema(), args.readme.read_text()
    if args.write:
        atomic_write_text(args.readme, render(text, schema))
        return 0
    stale = stale_sections(text, schema)
    if stale:
        print(f"error: {args.readme}: key tables out of date with the schema: {', '.join(stale)}; "
              "run `python -m mpq.config_docs --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
