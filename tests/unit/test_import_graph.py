"""The library's imports flow one way: no cycle among mpq/ modules, lazy imports included.

Layering: mpq.quant (quantizers, quantized layers, range init, PTQ) is below training
(mpq.train), model building (mpq.build) and the methods that use it (mpq.limpq, mpq.rfquant,
mpq.ompq, mpq.importance_file, mpq.search): none of its modules imports from them, lazily or not.
What both sides need (checkpoint I/O, policies, models) lives below, e.g. mpq.checkpoint.
"""
import ast
from pathlib import Path

import mpq

ROOT = Path(mpq.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


QUANT_IS_BELOW = ("mpq.train", "mpq.build", "mpq.limpq", "mpq.rfquant", "mpq.ompq", "mpq.importance_file", "mpq.search")


def _statements(path: Path, name: str):
    """(module, the module.name of each name imported from it) for every import anywhere in
    `path`'s body (so lazy imports count), made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((a.name, set()) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            yield target, {f"{target}.{a.name}" for a in node.names}


def _targets(path: Path, name: str) -> set[str]:
    """Every module `path` imports, with the names it imports from each as `module.name` too (a
    name may be a submodule)."""
    return {m for target, names in _statements(path, name) for m in {target} | names}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The mpq modules `path` imports: a `from` import's submodules, or the module itself when a
    name is taken from it."""
    found = set()
    for target, names in _statements(path, name):
        found |= names
        if not names or not names <= known:
            found.add(target)
    return {m for m in found if m in known and m != name}


def test_no_import_cycle_inside_mpq():
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {name: _imports(path, name, set(files)) for name, path in files.items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_quant_imports_nothing_from_the_layers_above_it():
    above = {}
    for path in (ROOT / "quant").rglob("*.py"):
        name = _module_name(path)
        bad = sorted(t for t in _targets(path, name)
                     if any(t == pkg or t.startswith(pkg + ".") for pkg in QUANT_IS_BELOW))
        if bad:
            above[name] = bad
    assert above == {}, f"mpq.quant reaches up into {above}"
