"""The package's layers depend one way: base helpers <- ops <- data, models <- method <- experiment
<- cli <- the `python -m` shims. Every import of a sammed_fast module is read from the source
(function-level imports too, which can hide an import circle); only a module's own
`if __name__ == "__main__":` block may call upward (it is a command, not a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sammed_fast

PACKAGE = Path(sammed_fast.__file__).parent
BASE = {"_extension", "errors", "atomic", "files", "cache", "plotting", "metrics", "options", "_C"}
LAYERS = {"ops": 1, "data": 2, "models": 2, "method": 3, "experiment": 4, "cli": 5}
SHIMS = 6  # sammed_fast/{train,evaluate,predict,pretrain,__main__}.py and the package's __init__


def layer(module: str) -> int:
    """The layer of a dotted module name inside sammed_fast."""
    parts = module.split(".")[1:]
    if not parts:
        return 0  # `from sammed_fast import ops` is judged by the name it imports (see imports())
    head = parts[0]
    if head in BASE:
        return 0
    return LAYERS.get(head, SHIMS)


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imports(path: Path) -> list[str]:
    """Every sammed_fast module the file imports, outside a `__main__` guard."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if _is_main_guard(node):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sammed_fast":
            if node.module == "sammed_fast":
                found.extend(f"sammed_fast.{alias.name}" for alias in node.names)
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names if alias.name.split(".")[0] == "sammed_fast")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def module_name(path: Path) -> str:
    parts = ("sammed_fast", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    name = module_name(path)
    own = SHIMS if name == "sammed_fast" else layer(name)
    upward = [module for module in imports(path) if layer(module) > own]
    assert not upward, f"{name} (layer {own}) imports from higher layers: {upward}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check itself can fail: an import of the experiment layer from a method module, even
    inside a function, is found; the same import under a __main__ guard is not."""
    inside = tmp_path / "inside.py"
    inside.write_text("def f():\n    from sammed_fast.experiment import distributed\n")
    guarded = tmp_path / "guarded.py"
    guarded.write_text("if __name__ == '__main__':\n    from sammed_fast.cli.train import main\n")
    assert [m for m in imports(inside) if layer(m) > LAYERS["method"]] == ["sammed_fast.experiment"]
    assert imports(guarded) == []


def test_every_subpackage_has_a_layer():
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages <= set(LAYERS), subpackages - set(LAYERS)
