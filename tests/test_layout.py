"""The package's layout (docs/architecture.md): folders by role, imports pointing one way.

Every module's imports are read with ast (function-level imports included), so a cycle or
an upward import fails here, not as an ImportError in a user's process.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "iwae"
LAYERS = ("core", "runtime", "data", "evaluation", "training", "missing", "app")   # bottom first
FACE = {"__init__.py", "__main__.py"}
MAX_FUNCTION_LINES = 80


def module_name(path):
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imported(name, path):
    """The iwae modules that module `name` imports (absolute names)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "iwae")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "iwae":
                target = node.module
            else:
                continue
            for alias in node.names:               # `from . import x` may name a module
                child = f"{target}.{alias.name}"
                found.add(child if child in MODULES else target)
    return found


def layer(name):
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


EDGES = {name: imported(name, path) for name, path in MODULES.items()}


def upward(name, targets):
    """The targets in a layer above name's."""
    rank = LAYERS.index(layer(name))
    return sorted(t for t in targets if layer(t) in LAYERS and LAYERS.index(layer(t)) > rank)


def test_the_top_of_the_package_holds_only_its_face():
    top = {p.name for p in SRC.glob("*.py")}
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert top == FACE
    assert folders == set(LAYERS)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) in LAYERS))
def test_a_module_imports_only_its_own_folder_and_the_folders_below(name):
    above = upward(name, EDGES[name])
    face = sorted(t for t in EDGES[name] if t == "iwae" or t.startswith("iwae.__"))
    assert not above, f"{name} imports {above}, above its layer {layer(name)}"
    assert not face, f"{name} imports the package's face {face}; import the module that defines the name"


@pytest.mark.parametrize("folder", ["core", "runtime"])
def test_the_math_and_the_runtime_import_only_torch_and_the_standard_library(folder):
    allowed = set(sys.stdlib_module_names) | {"torch", "iwae"}
    for name, path in MODULES.items():
        if layer(name) != folder:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            roots = ([a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import) else
                     [node.module.split(".")[0]] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert set(roots) <= allowed, f"{name} imports {roots}"


def test_no_import_cycle():
    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", f"import cycle: {' -> '.join(trail + [name])}"
        state[name] = "open"
        for target in sorted(EDGES.get(name, ())):
            if target in MODULES and target != name and not name.startswith(target + "."):
                visit(target, trail + [name])
        state[name] = "done"

    for name in sorted(MODULES):
        visit(name, [])


def test_relative_imports_are_read_as_the_modules_they_name(tmp_path):
    source = "from ..app.cli import main\nfrom .likelihood import log_likelihood\n"
    path = tmp_path / "iwae" / "evaluation" / "planted.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    targets = imported("iwae.evaluation.planted", path)
    assert targets == {"iwae.app.cli", "iwae.evaluation.likelihood"}
    assert upward("iwae.evaluation.planted", targets) == ["iwae.app.cli"]


def test_no_function_is_longer_than_80_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long


def test_import_iwae_loads_neither_matplotlib_scipy_nor_tensorboard():
    code = ("import sys, iwae; heavy = sorted({m.split('.')[0] for m in sys.modules} "
            "& {'matplotlib', 'scipy', 'tensorboard', 'pandas', 'sklearn'}); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
