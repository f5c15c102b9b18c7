"""The package's floors: data flows one way, and no package imports one above it.

Read from the source (``import`` statements, also those inside functions), so an import that
only runs on some code path still counts.
"""

import ast
from pathlib import Path

import unetseg

ROOT = Path(unetseg.__file__).parent

# package -> modules it must never import (the floors above it)
FORBIDDEN = {
    "data": ("unetseg.api", "unetseg.cli", "unetseg.infer", "unetseg.export", "unetseg.serve",
             "unetseg.train"),
    "model": ("unetseg.api", "unetseg.cli", "unetseg.infer", "unetseg.export", "unetseg.serve",
              "unetseg.train"),
    "infer": ("unetseg.api", "unetseg.cli", "unetseg.export", "unetseg.serve", "unetseg.train"),
    "export": ("unetseg.api", "unetseg.cli", "unetseg.serve", "unetseg.train"),
    "serve": ("unetseg.api", "unetseg.cli", "unetseg.export", "unetseg.train"),
    "train": ("unetseg.api", "unetseg.cli", "unetseg.export", "unetseg.serve"),
}

def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_no_package_imports_a_floor_above_it() -> None:
    wrong = []
    for package, above in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            wrong += [f"{path.relative_to(ROOT)} imports {name}" for name in _imports(path)
                      if name.startswith(above)]
    assert not wrong, "\n".join(wrong)
