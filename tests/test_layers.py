"""The package's floors: every import, at the top of a module or inside a function, goes to a
lower floor or stays inside its own package, so data flows one way and no import closes a
circle. Read the floors from the bottom up to read the code in order."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "unetseg"

FLOORS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("files", "runtime", "config", "progress"),
    ("viz", "metrics", "metrics_isbi", "metrics_boundary", "metrics_instance"),
    ("data", "model", "losses"),
    ("modelfile",),
    ("infer", "report"),
    ("train", "export"),
    ("serve", "napari", "presets", "preview", "api"),
    ("cli", "__init__"),
)
"""Top-level modules and packages of ``unetseg``, lowest floor first."""


def _floor_of(part: str) -> int:
    for level, names in enumerate(FLOORS):
        if part in names:
            return level
    raise AssertionError(f"unetseg.{part} is on no floor; add it to FLOORS")


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]  # a package is imported by its own name
        found[".".join(("unetseg", *parts))] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every ``unetseg`` module ``name`` imports, lazily or not (absolute or relative)."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {t for t in found if t.split(".")[0] == "unetseg"}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _arrows() -> list[tuple[str, str]]:
    """(importer, imported) pairs. The root package itself is left out as a target: Python runs
    it before any module of the package, so naming it (for ``__version__``) adds no arrow."""
    modules = _modules()
    return [(name, target) for name, path in modules.items() for target in _imports(name, path)
            if target in modules and target not in (name, "unetseg")]


def test_every_module_is_on_a_floor() -> None:
    for name in _modules():
        _floor_of(_top(name))


def test_no_import_goes_up_or_sideways() -> None:
    wrong = []
    for source, target in _arrows():
        src_top, dst_top = _top(source), _top(target)
        if src_top == dst_top and src_top != "__init__":
            continue  # inside one package
        if _floor_of(dst_top) >= _floor_of(src_top):
            wrong.append(f"{source} -> {target}")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_circle() -> None:
    graph: dict[str, set[str]] = {}
    for source, target in _arrows():
        graph.setdefault(source, set()).add(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_checks_find_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    fake = tmp_path / "unetseg"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "api.py").write_text("from unetseg.data import reader\n")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "data" / "reader.py").write_text("def read():\n    from unetseg import api\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    with pytest.raises(AssertionError, match="unetseg.data.reader -> unetseg.api"):
        test_no_import_goes_up_or_sideways()
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_no_import_circle()
