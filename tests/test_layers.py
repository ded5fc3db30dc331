"""The package's layers, read from the source: no import circle, and no lower floor importing a higher one.

Floors, lowest first (``docs/architecture.md``): ``detector`` (what the detector is) imports nothing
else of the project; ``models`` never imports training, analysis, applications or commands; ``train``
never imports ``analysis``, ``apps`` or ``commands`` (plots are hooks the commands attach); nothing
but ``commands`` and ``cli`` imports ``commands``. Every import counts, lazy ones inside functions
included: a lazy import is still a dependency, only a later one.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "xecmae"

FORBIDDEN = {  # package -> packages (or top-level modules) of the project it must not import
    "detector": None,  # None: nothing of the project at all
    "models": {"train", "analysis", "apps", "commands", "cli", "simulate"},
    "train": {"analysis", "apps", "commands", "cli"},
    "data": {"models", "train", "analysis", "apps", "commands", "cli"},
    "analysis": {"apps", "commands", "cli"},
    "apps": {"commands", "cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts ``a.b`` where that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "xecmae"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "xecmae":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
    return {m for m in found if m in modules and m != "xecmae"}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    assert len(paths) > 50, f"the package was not found under {PACKAGE}"
    modules = set(paths)
    return {name: project_imports(path, modules) for name, path in paths.items()}


def floor(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_no_import_circle(graph):
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []
    circles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                circles.append([*path[path.index(d):], d])
            elif d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    # a package's __init__ re-exporting its own modules is not a circle between floors
    real = [c for c in circles if len({floor(m) for m in c}) > 1 or not any(m.count(".") == 1 for m in c)]
    assert not real, "\n".join(" -> ".join(c) for c in real)


@pytest.mark.parametrize("lower", sorted(FORBIDDEN))
def test_no_lower_floor_imports_a_higher_one(graph, lower):
    forbidden = FORBIDDEN[lower]
    wrong = sorted(f"{m} imports {d}" for m, deps in graph.items() if floor(m) == lower for d in deps
                   if floor(d) != lower and (forbidden is None or floor(d) in forbidden))
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from xecmae.train.engine import fit\n")
    assert project_imports(bad, {"xecmae.train.engine", "xecmae.train"}) == {"xecmae.train.engine"}
