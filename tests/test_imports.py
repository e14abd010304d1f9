"""The package's modules import each other without cycles, counting imports
inside functions (which hide a cycle rather than remove it)."""
import ast
import os

import fastbilevel

PKG_DIR = os.path.dirname(fastbilevel.__file__)
PKG = "fastbilevel"


def _modules():
    """{module name: path} for every .py file of the package."""
    mods = {}
    for dirpath, dirnames, filenames in os.walk(PKG_DIR):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        rel = os.path.relpath(dirpath, PKG_DIR)
        parts = [PKG] + ([] if rel == "." else rel.split(os.sep))
        for f in filenames:
            if f.endswith(".py"):
                name = ".".join(parts if f == "__init__.py" else parts + [f[:-3]])
                mods[name] = os.path.join(dirpath, f)
    return mods


def _is_package(path):
    return os.path.basename(path) == "__init__.py"


def import_graph():
    """{module: set of package modules it imports anywhere in its body}."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        pkg = name if _is_package(path) else name.rpartition(".")[0]
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # ``from pkg import sub`` imports the submodule pkg.sub
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod
                           for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in mods and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}
    stack = []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_function_level_imports_are_counted():
    graph = import_graph()
    # minimize dispatches to the multi-task methods: a real edge either way
    assert "fastbilevel.meta" in graph["fastbilevel.minimize"]
