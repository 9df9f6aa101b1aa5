"""The package's shape: subpackages by concern, no import circle, private names stay in their module, one config
per stage. Read from the sources (ast), nothing is imported."""

import ast
from pathlib import Path

import pytest

from tinyllm_utils.core import code_version
from tinyllm_utils.core.profiles import STAGES

PACKAGE = Path(__file__).resolve().parents[1] / "tinyllm_utils"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def runtime_imports(path: Path):
    return code_version.runtime_imports(ast.parse(path.read_text()))


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for module, names in runtime_imports(path):
            for imported in names or [None]:
                target = f"{module}.{imported}" if imported and f"{module}.{imported}" in MODULES else module
                if target in MODULES and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circle():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_subpackages_do_not_import_each_other_in_a_circle():
    """The same at the level of subpackages (core, bfcl, models, ...), so the tree reads top-down."""
    def package(module):
        parts = module.split(".")
        return parts[1] if len(parts) > 2 else module

    graph: dict[str, set[str]] = {}
    for source, targets in import_graph().items():
        graph.setdefault(package(source), set()).update(package(t) for t in targets if package(t) != package(source))
    for targets in list(graph.values()):
        for target in targets:
            graph.setdefault(target, set())
    assert circles(graph) == []


def test_no_private_name_is_imported_across_modules():
    crossing = [f"{name} imports {module}.{imported}" for name, path in MODULES.items()
                for module, names in runtime_imports(path) for imported in names
                if imported.startswith("_") and module != name]
    assert crossing == []


@pytest.mark.parametrize("init", sorted(PACKAGE.glob("*/__init__.py")), ids=lambda p: p.parent.name)
def test_each_subpackage_says_what_it_holds_and_nothing_else(init):
    tree = ast.parse(init.read_text())
    assert ast.get_docstring(tree), f"{init} needs a docstring saying what the subpackage is"
    assert len(tree.body) == 1, f"{init} holds only its docstring (no re-exports: one place per name)"


def test_every_module_opens_with_a_docstring():
    missing = [name for name, path in MODULES.items() if not ast.get_docstring(ast.parse(path.read_text()))]
    assert missing == []


def test_one_config_per_stage_in_the_stage_module():
    for stage, spec in STAGES.items():
        module, _ = spec.config.split(":")
        assert module.startswith("tinyllm_utils.stages."), f"{stage}'s config lives in {module}"
    config_classes = [node.name for path in PACKAGE.rglob("*.py") for node in ast.parse(path.read_text()).body
                      if isinstance(node, ast.ClassDef) and node.name.endswith("Config")]
    assert len(config_classes) == len(set(config_classes))
    assert "EdgeConfig" not in config_classes  # the edge stage has one config, EdgeStageConfig
