"""The package's import structure: every module imports on its own, and no import cycles.

(a) Each module of ``ptynb`` (found by walking the source tree with :mod:`pkgutil`, without
    importing anything) imports in a fresh interpreter state: one subprocess imports them in
    turn, removing every ``ptynb`` module from ``sys.modules`` before each import, so a module
    that only works after another ptynb module was imported fails here.
(b) The module-level import graph (imports that run at import time: module body, ``if``/
    ``try``/``with`` blocks and class bodies, not function bodies or ``if TYPE_CHECKING:``)
    has no cycles. The only allowed back-edges are a module importing from one of its own
    ancestor packages (``from . import __version__``), which is what a package ``__init__``
    importing its own submodules leads to.
(c) What ``import ptynb`` / ``import ptynb.data`` may load is checked in ``test_import.py``.

The tests are generic: new modules and subpackages are picked up automatically.
"""
from __future__ import annotations

import ast
import itertools
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ptynb"


# ----------------------------------------------------------------------------- discovery
def discover(root: Path, package: str) -> dict[str, Path]:
    """``{module name: source file}`` for ``package`` at ``root`` (its ``__init__`` for packages)."""
    found = {package: root / "__init__.py"}

    def walk(path: Path, prefix: str):
        for info in pkgutil.iter_modules([str(path)], prefix + "."):
            leaf = info.name.rsplit(".", 1)[-1]
            if info.ispkg:
                found[info.name] = path / leaf / "__init__.py"
                walk(path / leaf, info.name)
            else:
                found[info.name] = path / f"{leaf}.py"

    walk(root, package)
    return found


# ----------------------------------------------------------------------------- graph
def _module_level_imports(tree: ast.Module):
    """Import nodes executed at import time (not in functions, not under TYPE_CHECKING)."""
    out = []

    def visit(stmts):
        for node in stmts:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            elif isinstance(node, ast.If):
                test = node.test
                name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
                if name != "TYPE_CHECKING":
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try) or (sys.version_info >= (3, 11) and isinstance(node, ast.TryStar)):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, (ast.With, ast.AsyncWith, ast.For, ast.While, ast.ClassDef)):
                visit(node.body)
                visit(getattr(node, "orelse", []))

    visit(tree.body)
    return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(modules: dict[str, Path], package: str) -> dict[str, set[str]]:
    """Module-level import edges between modules of ``package``, upward edges removed.

    An edge A -> B means importing A runs B's code. Importing ``x.y.z`` also runs ``x.y``'s
    ``__init__``: those implied edges are added too, except to packages that contain A (a
    module importing from its own ancestor package, which is initialising already).
    """
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _module_level_imports(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base_parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            for t in targets:
                if t != package and not t.startswith(package + "."):
                    continue
                while t not in modules and "." in t:  # `import pkg.mod.attr`-style leftovers
                    t = t.rsplit(".", 1)[0]
                own = set(_ancestors(mod))
                for dep in [*_ancestors(t), t]:
                    if dep != mod and dep not in own and dep in modules:
                        graph[mod].add(dep)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def strong(v):  # Tarjan (recursion depth <= number of modules)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    cycles = []
    for comp in comps:  # shortest path back to the start, inside the component
        start, members = comp[0], set(comp)
        prev = {start: None}
        queue = [start]
        end = None
        while queue and end is None:
            v = queue.pop(0)
            for w in sorted(graph[v]):
                if w == start:
                    end = v
                    break
                if w in members and w not in prev:
                    prev[w] = v
                    queue.append(w)
        back = []  # end, prev[end], ..., start
        while end is not None:
            back.append(end)
            end = prev[end]
        cycles.append(back[::-1] + [start])
    return cycles


# ----------------------------------------------------------------------------- tests
def test_discovery_finds_the_package_without_importing_it():
    modules = discover(ROOT, "ptynb")
    for name in ("ptynb", "ptynb.data", "ptynb.accessor", "ptynb.io", "ptynb.io._atomic", "ptynb.physics.units"):
        assert name in modules, name
    assert all(p.is_file() for p in modules.values())
    assert len(modules) > 40


def test_no_import_cycles():
    modules = discover(ROOT, "ptynb")
    graph = import_graph(modules, "ptynb")
    assert "ptynb.accessor" in graph["ptynb"]  # ptynb/__init__ registers the accessor
    assert "ptynb.accessor" in graph["ptynb.data"]
    assert not graph["ptynb.accessor"], graph["ptynb.accessor"]  # xarray/numpy only
    cycles = find_cycles(graph)
    assert not cycles, "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "fake"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


def test_cycle_detection_on_a_fake_package(tmp_path):
    """The checker finds a real cycle (with its path) and accepts the allowed patterns."""
    root = _fake_package(tmp_path, {
        "__init__.py": "from . import a\n__version__ = '1'\n",
        "a.py": "from . import __version__\nfrom .sub import x\n",
        "sub/__init__.py": "from .x import f\n",
        "sub/x.py": "import numpy\nfrom .. import b\ndef f():\n    from .. import a\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
                "class K:\n    from .c import g\n",
        "c.py": "try:\n    from fake.a import something\nexcept ImportError:\n    pass\ng = 1\n",
    })
    modules = discover(root, "fake")
    assert set(modules) == {"fake", "fake.a", "fake.b", "fake.c", "fake.sub", "fake.sub.x"}
    graph = import_graph(modules, "fake")
    assert graph["fake"] == {"fake.a"}
    assert graph["fake.a"] == {"fake.sub", "fake.sub.x"}  # importing sub.x runs sub/__init__
    assert graph["fake.sub.x"] == {"fake.b"}  # function-level import ignored
    assert graph["fake.b"] == {"fake.c"}  # TYPE_CHECKING ignored, class body counted
    assert graph["fake.c"] == {"fake.a"}  # absolute import inside try counted
    cycles = find_cycles(graph)
    assert len(cycles) == 1
    cyc = cycles[0]
    assert cyc[0] == cyc[-1] == "fake.a" and len(cyc) == 5  # a -> sub.x -> b -> c -> a
    assert set(cyc) == {"fake.a", "fake.sub.x", "fake.b", "fake.c"}
    for u, v in itertools.pairwise(cyc):
        assert v in graph[u], (u, v)
    # break the cycle: c no longer imports a at module level -> no cycle
    (root / "c.py").write_text("def h():\n    from fake.a import something\n")
    assert find_cycles(import_graph(discover(root, "fake"), "fake")) == []


_IMPORT_EACH = r"""
import importlib, json, sys, traceback, warnings
warnings.simplefilter("ignore")
results = {}
pkg = sys.argv[2]
for name in json.loads(sys.argv[1]):
    for k in [k for k in sys.modules if k == pkg or k.startswith(pkg + ".")]:
        del sys.modules[k]
    try:
        importlib.import_module(name)
        results[name] = None
    except ModuleNotFoundError as e:
        missing = e.name or ""
        results[name] = ("skip:" + missing) if missing and not missing.startswith(pkg) else traceback.format_exc()
    except BaseException:
        results[name] = traceback.format_exc()
print(json.dumps(results))
"""


def import_each(names: list[str], package: str, path: Path | None = None) -> dict[str, str | None]:
    """Import each module in one subprocess, with ``package`` cleared from sys.modules before each.

    Returns ``{name: None (ok) | "skip:<missing third-party module>" | traceback}``.
    """
    env = {**os.environ, "MPLBACKEND": "Agg"}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _IMPORT_EACH, json.dumps(names), package],
                         check=False, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_each_catches_order_dependence(tmp_path):
    """A module that works only after another was imported is reported (the checker can fail)."""
    _fake_package(tmp_path, {
        "__init__.py": "",
        "first.py": "import sys\nsys.modules[__package__].registry = {}\n",
        "second.py": "import fake\nfake.registry['x'] = 1  # needs fake.first imported before\n",
        "third.py": "import not_a_real_dependency_xyz\n",
    })
    res = import_each(["fake.first", "fake.second", "fake.third"], "fake", tmp_path)
    assert res["fake.first"] is None
    assert "AttributeError" in res["fake.second"] and "registry" in res["fake.second"]
    assert res["fake.third"] == "skip:not_a_real_dependency_xyz"


def test_every_module_imports_alone():
    names = sorted(discover(ROOT, "ptynb"))
    results = import_each(names, "ptynb")
    assert set(results) == set(names)
    failed = {k: v for k, v in results.items() if v is not None and not v.startswith("skip:")}
    assert not failed, "modules that fail to import on their own:\n" + "\n".join(
        f"--- {k}\n{v}" for k, v in failed.items())
    skipped = {k: v for k, v in results.items() if v is not None}
    if skipped:
        pytest.skip(f"optional dependencies missing for: {skipped}")
