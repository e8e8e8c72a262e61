"""No import circles inside ``keras_tfkd`` (data flows one way), no module too long.

The check reads the source with :mod:`ast` and imports nothing of the package,
so it is fast and the same on every backend. Its rules:

* every ``import`` and ``from ... import`` statement counts, wherever it is:
  at the top, inside a function, under ``if TYPE_CHECKING``, in a ``try``;
* relative imports are resolved against the importing module's package;
* ``import keras_tfkd.a.b`` is an edge to ``keras_tfkd.a.b``;
* ``from keras_tfkd.a import b`` is an edge to the module ``keras_tfkd.a.b``
  when that is a module (or a package), else to ``keras_tfkd.a`` (the name is
  read from the package ``__init__``);
* a submodule importing a name from its parent package (``from keras_tfkd.data
  import load`` inside ``keras_tfkd/data/arrays.py``) is an edge to the parent,
  so it closes a circle with the parent's own ``from .arrays import ...``; the
  parents that Python runs before a submodule (``keras_tfkd/__init__.py``
  before ``keras_tfkd.data``) are not edges: a package ``__init__`` may import
  its own submodules as long as they do not import it back;
* a module importing itself is ignored; every strongly connected component of
  more than one module is a circle, reported with the statements inside it.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

# Reads the source only: the same on every backend (tests/conftest.py).
pytestmark = pytest.mark.one_backend

# The source next to the tests (nothing of the package is imported).
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "keras_tfkd"


def _module_names(package_dir: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file for every ``.py`` file under ``package_dir``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package, *parts])] = path
    return modules


def import_edges(package_dir: Path, package: str) -> dict[str, dict[str, list[int]]]:
    """The import graph of a package, read with ``ast``.

    Args:
        package_dir: the folder of the package (the one holding ``__init__.py``).
        package: its dotted import name.

    Returns:
        ``{importer: {imported: [line numbers]}}`` for the imports from one
        module of the package to another (self-imports left out).
    """
    modules = _module_names(package_dir, package)
    edges: dict[str, dict[str, list[int]]] = {name: {} for name in modules}

    def target(name: str) -> str | None:
        # The longest prefix of `name` that is a module of the package.
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in modules:
                return candidate
        return None

    for importer, path in modules.items():
        is_package = path.name == "__init__.py"
        # The package that relative imports start from.
        base = importer if is_package else importer.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            found: list[str | None] = []
            if isinstance(node, ast.Import):
                found = [target(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    source = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    found.append(submodule if submodule in modules else target(source))
            for imported in found:
                if imported is not None and imported != importer:
                    edges[importer].setdefault(imported, []).append(node.lineno)
    return edges


def import_cycles(package_dir: Path, package: str) -> list[str]:
    """Every import circle of a package, one readable entry per circle.

    Args:
        package_dir: the folder of the package (the one holding ``__init__.py``).
        package: its dotted import name.

    Returns:
        One string per strongly connected component of more than one module:
        its modules and the import statements (``module:line -> module``)
        between them; empty when the imports flow one way.
    """
    edges = import_edges(package_dir, package)
    # Tarjan's algorithm, iterative (no recursion limit on a deep package).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    report = []
    for component in sorted(components):
        members = set(component)
        lines = [
            f"    {importer}:{','.join(map(str, sorted(set(numbers))))} -> {imported}"
            for importer in component
            for imported, numbers in sorted(edges[importer].items())
            if imported in members
        ]
        report.append(" <-> ".join(component) + "\n" + "\n".join(lines))
    return report


def test_keras_tfkd_has_no_import_cycles():
    cycles = import_cycles(PACKAGE_DIR, "keras_tfkd")
    assert not cycles, "import circles in keras_tfkd:\n" + "\n".join(cycles)


def test_the_scan_sees_every_module():
    edges = import_edges(PACKAGE_DIR, "keras_tfkd")
    assert "keras_tfkd.data.batching" in edges
    assert "keras_tfkd.models" in edges  # a package under its own name
    # A module-level import, and one inside a function of the data package.
    assert "keras_tfkd.data.dataset" in edges["keras_tfkd.data.loaders"]


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "pkg"


def test_the_checker_finds_every_kind_of_circle(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "from pkg.sub import helper\n",
            # A relative import at the top closes a circle with an import in a
            # function of the other module.
            "a.py": "from . import b\n",
            "b.py": "def f():\n    from pkg.a import thing\n",
            # A submodule importing a name from its parent package's __init__.
            "sub/__init__.py": "from .helper import value\n",
            "sub/helper.py": (
                "from pkg.sub import other\nfrom .. import e\nvalue = 1\n"
            ),
            # An import under TYPE_CHECKING; `import x.y` form.
            "c.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    import pkg.d\n"
            ),
            "d.py": "import pkg.c\n",
            # Not circles: a self-import, a one-way chain, a sibling imported
            # through its parent (`from pkg.sub import helper` is a module).
            "e.py": "import pkg.e\nfrom pkg import a\n",
            "f.py": "from pkg.sub import helper\n",
        },
    )
    cycles = import_cycles(package, "pkg")
    assert [cycle.splitlines()[0] for cycle in cycles] == [
        "pkg.a <-> pkg.b",
        "pkg.c <-> pkg.d",
        "pkg.sub <-> pkg.sub.helper",
    ]
    assert "    pkg.b:2 -> pkg.a" in cycles[0].splitlines()
    assert "    pkg.c:3 -> pkg.d" in cycles[1].splitlines()
    assert "    pkg.sub.helper:1 -> pkg.sub" in cycles[2].splitlines()
    # `from .. import e` two levels down resolves to the module pkg.e.
    assert import_edges(package, "pkg")["pkg.sub.helper"] == {
        "pkg.sub": [1],
        "pkg.e": [2],
    }


def test_the_checker_passes_a_package_that_flows_one_way(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "from pkg.high import run\nfrom . import low\n",
            "low.py": "KEY = 'x'\n",
            "high.py": "from pkg.low import KEY\n\ndef run():\n    import pkg.low\n",
        },
    )
    assert import_cycles(package, "pkg") == []
    assert import_edges(package, "pkg")["pkg.high"] == {"pkg.low": [1, 4]}


# ------------------------------------------------------------ the house's size
#: A module past this is doing several things: split it by what it holds.
MAX_MODULE_LINES = 800
#: The Distiller keeps __init__, compile, call, compute_loss, fit/evaluate and
#: its config; its parts live in distiller_checks, term_plan, loss_weights
#: and teacher_hooks.
MAX_DISTILLER_CLASS_LINES = 420


def test_no_module_is_over_800_lines():
    sizes = {
        str(path.relative_to(PACKAGE_DIR)): len(path.read_text().splitlines())
        for path in PACKAGE_DIR.rglob("*.py")
    }
    assert len(sizes) > 50
    too_long = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"split these modules by what they hold: {too_long}"


def test_the_distiller_class_fits_in_ones_head():
    source = (PACKAGE_DIR / "distiller.py").read_text()
    (cls,) = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name == "Distiller"
    ]
    lines = cls.end_lineno - cls.lineno + 1
    assert 100 < lines <= MAX_DISTILLER_CLASS_LINES, lines
