"""The layout's one rule (docs/architecture.md): imports run one way, from the top (cli, experiments) down to the
model, data and file I/O, with no circle between modules. Function-level imports count as much as top-level ones."""

import ast
from pathlib import Path

import hafrm

PACKAGE = Path(hafrm.__file__).parent
# bottom to top; a module may import from its own layer and the layers below it
LAYERS = ("io", "data", "model", "eval", "training", "serve", "rlhf", "experiments", "cli")
LEAVES = {"hafrm.testing"}  # test helpers: import nothing of hafrm, imported by tests and benchmarks only


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def hafrm_imports(path: Path) -> set[str]:
    """Every hafrm module a file imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hafrm"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from hafrm.x import submodule`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hafrm"))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in hafrm_imports(path) if m in modules and m != name} for name, path in modules.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_belongs_to_a_layer():
    loose = [m for m in import_graph() if layer(m) is None and m not in LEAVES | {"hafrm"}]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_imports_run_downwards_only():
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if module != "hafrm" and (layer(target) or 0) > (layer(module) if layer(module) is not None else -1)
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    graph.pop("hafrm")  # the public API imports everything lazily, and package __init__s their own modules
    for name in list(graph):
        graph[name] = {t for t in graph[name] if t != "hafrm" and not name.startswith(t + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_checks_see_a_violation():
    """The graph really reads imports: the pipeline reaches the model, the model never the pipeline."""
    graph = import_graph()
    assert "hafrm.model.hybrid" in graph["hafrm.training.pipeline"]
    assert (
        layer("hafrm.cli.main")
        > layer("hafrm.training.pipeline")
        > layer("hafrm.model.hybrid")
        > layer("hafrm.io.export")
    )
