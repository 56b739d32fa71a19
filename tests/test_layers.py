"""The package's layers: no import cycle between its modules, counting imports inside functions."""

from __future__ import annotations

import ast
import pathlib

import itemjax

PACKAGE = pathlib.Path(itemjax.__file__).parent


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: {itemjax modules it imports anywhere in its body}}``."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from itemjax import sampling" imports the submodule itemjax.objective.sampling
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name and t != "itemjax"}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]):
    """A list of modules forming a cycle, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"itemjax.train.step", "itemjax.evaluation.evaluate", "itemjax.train.placement"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_low_layers_do_not_import_high_ones():
    graph = import_graph()
    assert "itemjax.train.step" not in graph["itemjax.parallel.distributed"]
    assert "itemjax.evaluation.evaluate" not in graph["itemjax.parallel.distributed"]
    assert not {m for m in graph["itemjax.cli"] if m.startswith(("itemjax.train.step", "itemjax.train.run"))}


# Subpackages in the order the data flows through them; the package's top-level modules (errors,
# reductions, runio, config, cli) are the base every layer may use.
LAYERS = ("base", "parallel", "native", "data", "graph", "model", "objective", "evaluation", "train", "serve",
          "commands")


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS):
        return parts[1]
    return "commands" if module == "itemjax.__main__" else "base"


def test_every_module_lives_in_a_known_layer():
    assert {layer_of(m) for m in import_graph()} <= set(LAYERS)


def test_subpackages_import_only_lower_layers():
    """native -> data -> graph -> model -> objective -> evaluation -> train -> serve -> commands: no import goes up."""
    rank = {name: n for n, name in enumerate(LAYERS)}
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                    if rank[layer_of(b)] > rank[layer_of(a)])
    assert not upward, upward


def test_layer_of_names_the_subpackage():
    assert layer_of("itemjax.graph.propagation") == "graph" and layer_of("itemjax.errors") == "base"
    assert layer_of("itemjax.commands") == "commands" and layer_of("itemjax.model.models") == "model"
