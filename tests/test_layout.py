"""Facts about vidqa's layout, computed from the source with ``ast`` (nothing is imported):

- every module has a layer, and no import goes from a lower layer to a higher one;
- no import cycle among vidqa modules;
- a module over 500 lines says why in a ``# Over 500 lines: <why>`` comment at its top;
- every module has a test file that mirrors it, or an entry with a reason in ``NO_TEST_FILE``.

Every ``import``/``from ... import`` counts, wherever it is: at the top, inside a function, under
``if TYPE_CHECKING``. ``from package import name`` is an import of ``package.name`` when that is a
module, else of the package itself.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "vidqa"
TESTS = REPO / "tests"

# An import may go to the same or a lower layer only. Keys are module path prefixes (a key covers the
# module of that name and everything under it); the longest matching key wins.
LAYERS = {
    "vidqa.cli": 7,
    "vidqa.library": 6, "vidqa.bench": 6, "vidqa.train": 6, "vidqa.testing": 6,
    "vidqa.serve": 6, "vidqa.search": 6,  # the resident engine and its API; ranking indexed videos
    "vidqa.pipeline": 5,
    "vidqa.generate": 4,
    "vidqa.methods": 3,
    "vidqa.checkpoint": 2, "vidqa.store": 2, "vidqa.quant": 2,
    "vidqa.options": 1, "vidqa.video": 1, "vidqa.vision": 1, "vidqa.fast": 1, "vidqa.synthetic": 1,
    "vidqa.int4": 1,  # the 4-bit weight format and its kernels (vidqa.quant picks it)
    "vidqa.fp8": 1,  # fp8 compression's one-pass MLP kernel (vidqa.fast runs it)
    "vidqa.attention": 1,  # the decode step's attention kernels (vidqa.generate runs them)
    "vidqa.framecache": 1,  # the per-frame cache type that methods make and the store keeps
    "vidqa.errors": 0,
}
EXEMPT = {"vidqa", "vidqa.__main__"}  # the lazy public API and ``python -m vidqa``: they may import anything

MAX_LINES = 500
WHY_LONG = re.compile(r"^# Over 500 lines: \S", re.MULTILINE)

# Modules without a mirroring test file, each with the reason.
NO_TEST_FILE = {
    "vidqa": "the public API; its names are exercised by every test file and the README example",
    "vidqa.__main__": "`python -m vidqa` runs in tests/test_cli.py and tests/test_library.py",
}


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by the name of its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer(name: str) -> int | None:
    keys = [k for k in LAYERS if name == k or name.startswith(k + ".")]
    return LAYERS[max(keys, key=len)] if keys else None


def _known(name: str) -> str | None:
    """The module that importing ``name`` runs: itself, or its longest prefix that is a module."""
    mods = modules()
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports(name: str) -> frozenset[str]:
    """The vidqa modules that module ``name`` imports, anywhere in its source."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "vidqa" or target.startswith("vidqa."):
                if (module := _known(target)) and module != name:
                    found.add(module)
    return frozenset(found)


def graph() -> dict[str, set[str]]:
    """Import edges between the modules that the layering rules cover (not the exempt ones)."""
    nodes = [m for m in modules() if m not in EXEMPT]
    return {m: {t for t in imports(m) if t not in EXEMPT} for m in nodes}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def mirrors(name: str) -> list[Path]:
    """The test files that would mirror module ``name``: tests/test_<name>.py, or the name prefixed by
    its packages (tests/test_<package>_<name>.py, ...), without the leading ``vidqa``."""
    parts = name.split(".")[1:]
    return [TESTS / f"test_{'_'.join(parts[i:])}.py" for i in range(len(parts))]


def _reexports_only(path: Path) -> bool:
    """A package ``__init__`` of docstring, imports and ``__all__`` only: nothing of its own to test."""
    if path.name != "__init__.py":
        return False
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, (ast.Import, ast.ImportFrom)) or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
               or (isinstance(n, ast.Assign) and [getattr(t, "id", None) for t in n.targets] == ["__all__"]) for n in body)


# ---- the rules -----------------------------------------------------------------------------------


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m not in EXEMPT and layer(m) is None]
    assert not unplaced, f"modules with no layer (add them to LAYERS): {unplaced}"


def test_no_import_goes_up():
    up = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
          for m, targets in sorted(graph().items()) for t in sorted(targets)
          if layer(m) is not None and layer(t) is not None and layer(t) > layer(m)]
    assert not up, "imports from a lower layer to a higher one:\n" + "\n".join(up)


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_long_modules_say_why():
    silent = []
    for name, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_LINES:
            body = ast.parse(text).body
            first_code = next((n.lineno for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))),
                              len(text.splitlines()) + 1)
            top = "\n".join(text.splitlines()[: first_code - 1])
            if not WHY_LONG.search(top):
                silent.append(f"{name}: {len(text.splitlines())} lines")
    assert not silent, "over 500 lines without a '# Over 500 lines: <why>' comment at the top:\n" + "\n".join(silent)


def test_every_module_has_a_mirroring_test_file():
    missing = [f"{name} (e.g. {mirrors(name)[-min(2, len(mirrors(name)))].relative_to(REPO)})" for name, path in modules().items()
               if name not in NO_TEST_FILE and not _reexports_only(path) and not any(p.exists() for p in mirrors(name))]
    assert not missing, "modules without a mirroring test file:\n" + "\n".join(missing)
    stale = [name for name in NO_TEST_FILE if name not in modules()]
    assert not stale, f"exemptions of modules that no longer exist: {stale}"


# ---- the checker itself, on made-up sources ------------------------------------------------------


def test_checker_finds_cycles_and_resolves_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "vidqa"
    (pkg / "store").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    import vidqa.store.io  # in a function: counts\n")
    (pkg / "store" / "__init__.py").write_text("from vidqa.store.io import x\n__all__ = ['x']\n")
    (pkg / "store" / "io.py").write_text("from . import codec\nfrom vidqa.errors import E\nimport torch\n")
    (pkg / "store" / "codec.py").write_text("from vidqa.store import x  # the package itself\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    modules.cache_clear()
    imports.cache_clear()
    try:
        assert imports("vidqa.errors") == {"vidqa.store.io"}
        assert imports("vidqa.store.io") == {"vidqa.store.codec", "vidqa.errors"}
        assert imports("vidqa.store.codec") == {"vidqa.store"}
        # errors <-> store.io, and store.io -> codec -> store (the package) -> store.io: one component
        assert cycles(graph()) == [["vidqa.errors", "vidqa.store", "vidqa.store.codec", "vidqa.store.io"]]
        assert layer("vidqa.store.io") == 2 and layer("vidqa.storehouse") is None and layer("vidqa.errors") == 0
        assert _reexports_only(pkg / "store" / "__init__.py") and not _reexports_only(pkg / "errors.py")
    finally:
        modules.cache_clear()
        imports.cache_clear()
