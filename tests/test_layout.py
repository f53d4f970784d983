"""The package layout: a method is one subpackage, nothing below names it, imports go down.

Removing a method is deleting `cpcl/methods/<name>/`, its line in `cpcl.methods.REGISTRY` and
`tests/methods/<name>/`; these checks fail when shared code depends on one method.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from cpcl.methods import REGISTRY, Method, get_method

PKG = Path(__file__).resolve().parents[1] / "cpcl"
# Layers without any method: they may not import a method package nor mention one by name.
SHARED = ("models", "data", "evaluate", "engine", "ops")


def _shared_files() -> list[Path]:
    files = [p for layer in SHARED for p in (PKG / layer).rglob("*.py")]
    return files + [p for p in PKG.glob("*.py")] + [PKG / "methods" / "base.py"]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_method_is_its_own_package(name):
    module = importlib.import_module(f"cpcl.methods.{name}")
    assert Path(module.__file__).name == "__init__.py", f"cpcl.methods.{name} is not a package"
    assert Path(module.__file__).parent == PKG / "methods" / REGISTRY[name]
    assert issubclass(module.METHOD, Method) and get_method(name) is module.METHOD
    assert module.METHOD.name == name
    assert module.METHOD.streams, f"method {name!r} declares no data stream"


def _identifiers(tree: ast.AST) -> set[str]:
    """Names a module defines, reads or imports (not its strings: data formats such as the
    "u2pl-city" list layout keep their projects' names)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            out.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            out.update((node.module or "").split("."))
            out.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(part for a in node.names for part in a.name.split("."))
    return out


# "cpcl" is also the package's name and "sup" the generic word for supervised terms
# (`build_sup_criterion`, `loss_sup`), so only the other method names can be searched for.
@pytest.mark.parametrize("name", [n for n in REGISTRY if n not in ("cpcl", "sup")])
def test_no_shared_module_imports_or_names_a_method(name):
    offenders = [
        str(p.relative_to(PKG))
        for p in _shared_files()
        if any(name in ident.lower().split("_") for ident in _identifiers(ast.parse(p.read_text())))
    ]
    assert offenders == [], f"shared modules import or name method {name!r}: {offenders}"


def test_package_modules_import_cpcl_at_the_top_only():
    """Layers import downwards, so no module needs a function-level import of a cpcl module to
    dodge a cycle (third-party optional imports inside functions are fine)."""
    late = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and inner.level > 0:
                        late.append(f"{path.relative_to(PKG)}:{inner.lineno} {inner.module}")
    assert late == [], late


# Layers, bottom to top: below the methods (models, data, ops, evaluate, presets and the
# top-level modules), the methods (`cpcl.methods`), the engine, the entry layer (`cpcl.cli`).
# Each module may import only its own layer and those below.
_ABOVE_METHODS = ("cpcl.engine", "cpcl.cli")
_FORBIDDEN: dict[str, tuple[str, ...]] = {
    "below": ("cpcl.methods", *_ABOVE_METHODS),
    "methods": _ABOVE_METHODS,
    "engine": ("cpcl.cli",),
}


def _layer(path: Path) -> str:
    top = path.relative_to(PKG).parts[0]
    if top in ("methods", "engine"):
        return top
    return "cli" if top == "cli" else "below"


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the cpcl modules `path` imports (relative imports resolved)."""
    package = ["cpcl", *path.relative_to(PKG).parent.parts]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            out.add(module)
            # `from .. import methods` imports a module by its attribute name.
            out.update(f"{module}.{a.name}" for a in node.names)
    return out


def test_layers_import_downwards():
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        forbidden = _FORBIDDEN.get(_layer(path), ())
        for module in sorted(_imported_modules(path)):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                offenders.append(f"{path.relative_to(PKG)} imports {module}")
    assert offenders == [], "imports that run up the layers:\n" + "\n".join(offenders)


# One concern per module (the style guide's "modules stay under ~500 lines"): a module that
# grows past this is split along its concerns, not allowed to creep.
MAX_MODULE_LINES = 500


def test_no_package_module_is_over_the_size_limit():
    sizes = {str(p.relative_to(PKG)): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    over = {name: n for name, n in sorted(sizes.items()) if n > MAX_MODULE_LINES}
    assert over == {}, f"modules over {MAX_MODULE_LINES} lines (split them): {over}"
