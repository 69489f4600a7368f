"""The gmflow package has no import cycle (function-local imports included) and no module imports
another module's ``_private`` names. Parsed with ``ast``: nothing is imported or run."""

from __future__ import annotations

import ast
from pathlib import Path

import gmflow

ROOT = Path(gmflow.__file__).parent

# Known exceptions, each with its reason (none at present). Entries: (importing module, imported
# module[, name]).
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()
KNOWN_LAYER_EDGES: set[tuple[str, str]] = set()
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, level: int, target: str | None) -> str:
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    if level:
        base = base[: len(base) - level + (1 if is_package else 0)]
        return ".".join(base + ([target] if target else []))
    return target or ""


def _imports(module: str, source: str | None = None):
    """(imported module, imported name or None, line) for every import in ``module``, at any depth."""
    tree = ast.parse(source if source is not None else MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node.level, node.module)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    yield f"{source}.{alias.name}", None, node.lineno  # a submodule
                else:
                    yield source, alias.name, node.lineno


def _private_attribute_uses(module: str):
    """``alias._name`` where ``alias`` is bound to a gmflow module by an import."""
    tree = ast.parse(MODULES[module].read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(module, node.level, node.module)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")
                and f"{aliases[node.value.id]}.{node.attr}" not in MODULES):
            yield aliases[node.value.id], node.attr, node.lineno


def _graph():
    """module -> the modules importing it runs: the target and, outside the importer's own packages,
    the target's parent packages (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``)."""
    graph = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in _imports(module):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                t = ".".join(parts[:i])
                own_package = _is_ancestor_package(t, module) and i < len(parts)  # already running
                if t in MODULES and t != module and not own_package:
                    graph[module].add(t)
    return graph


def _cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _is_ancestor_package(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_cycle():
    graph = _graph()
    for module, targets in graph.items():
        graph[module] = {t for t in targets if (module, t) not in KNOWN_CYCLE_EDGES}
    cycles = _cycles(graph)
    assert not cycles, "import cycles among gmflow modules:\n" + "\n".join(
        " <-> ".join(sorted(c)) for c in cycles)


def _layer(module: str) -> str:
    """The first-level part of gmflow a module belongs to (``gmflow.flow.sampling`` -> ``gmflow.flow``)."""
    return ".".join(module.split(".")[:2])


def test_no_cycle_among_layers():
    """Sub-packages and top-level modules (layers) depend on each other without a cycle."""
    layers = {}
    for module, targets in _graph().items():
        for t in targets:
            a, b = _layer(module), _layer(t)
            if a != b and "." in a and "." in b and (a, b) not in KNOWN_LAYER_EDGES:
                layers.setdefault(a, set()).add(b)
                layers.setdefault(b, set())
    cycles = _cycles(layers)
    assert not cycles, "cycles among gmflow layers:\n" + "\n".join(" <-> ".join(sorted(c)) for c in cycles)


def test_no_cross_module_private_import():
    found = []
    for module in MODULES:
        for target, name, line in _imports(module):
            if name and name.startswith("_") and not name.startswith("__") and target.startswith("gmflow"):
                if target != module and (module, target, name) not in KNOWN_PRIVATE_IMPORTS:
                    found.append(f"{module}:{line} imports {target}.{name}")
        for target, name, line in _private_attribute_uses(module):
            if target != module and (module, target, name) not in KNOWN_PRIVATE_IMPORTS:
                found.append(f"{module}:{line} uses {target}.{name}")
    assert not found, "\n".join(found)


def test_the_checks_see_a_cycle_and_a_private_import():
    """The detectors themselves work (on a made-up graph and this test's own parser)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [{"a", "b", "c"}]
    source = "def f():\n    from .reference.flow import _secret\n    from . import ops\n"
    assert (("gmflow.reference.flow", "_secret", 2) in set(_imports("gmflow.ops", source))
            and ("gmflow.reference", "flow", 2) not in set(_imports("gmflow.ops", source)))
