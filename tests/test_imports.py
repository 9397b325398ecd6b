"""Importing is free of side effects: no module of edensplit builds an app or reads the environment when
imported, the edge does not import the cloud server, and the package has no import cycles (imports
inside functions and under TYPE_CHECKING included)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "edensplit"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))

WATCH = r"""
import json, os, sys, traceback
import fastapi, httpx, numpy, torch, uvicorn, websockets, pydantic_settings, prometheus_client, av, PIL  # noqa
reads, apps = [], []

class Recording(type(os.environ)):
    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._note(key)
        return super().get(key, default)

    def __contains__(self, key):
        self._note(key)
        return super().__contains__(key)

    def __iter__(self):
        self._note("*")
        return super().__iter__()

    def _note(self, key):  # a read by edensplit's own code (libraries' reads at class creation aside)
        caller = traceback.extract_stack()[-3]
        if "/edensplit/" in caller.filename:
            reads.append((key, caller.filename, caller.lineno))

os.environ.__class__ = Recording
original = fastapi.FastAPI.__init__

def spy(self, *args, **kwargs):
    apps.append(kwargs.get("title", "?"))
    original(self, *args, **kwargs)

fastapi.FastAPI.__init__ = spy
settings_init = pydantic_settings.BaseSettings.__init__

def settings_spy(self, *args, **kwargs):  # settings read the environment through pydantic-settings
    reads.append((type(self).__name__, "settings", 0))
    settings_init(self, *args, **kwargs)

pydantic_settings.BaseSettings.__init__ = settings_spy
import importlib
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps({"reads": reads, "apps": apps}))
"""


def test_importing_every_module_builds_no_app_and_reads_no_environment():
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "HOME"):
        if key in os.environ:
            env[key] = os.environ[key]
    r = subprocess.run([sys.executable, "-c", WATCH, json.dumps(MODULES)], env=env, capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(MODULES) > 40
    assert seen == {"reads": [], "apps": []}


def test_the_watch_sees_an_app_built_at_import():
    """The spy works: reading `edensplit.cloud.app` builds the app from the environment, and the watch sees it."""
    code = WATCH.replace("print(json.dumps", "import edensplit.cloud; edensplit.cloud.app\nprint(json.dumps")
    r = subprocess.run([sys.executable, "-c", code, "[]"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["apps"] == ["edensplit cloud (EDEN encoder)"] and seen["reads"]


def test_the_edge_does_not_import_the_cloud_server():
    code = "import sys, edensplit.servers.edge.service; print(sorted(sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    loaded = r.stdout
    assert "edensplit.servers.edge.service" in loaded and "edensplit.servers.cloud" not in loaded
    # flow B's client of the cloud is the typed cloud client alone: no jobs, no video, no PyAV
    assert "'edensplit.client.services'" in loaded
    assert not any(f"'{m}" in loaded for m in ("edensplit.client.jobs", "edensplit.client.flows", "edensplit.video",
                                              "av'", "av.")), loaded


def imports_of(path: Path) -> set[str]:
    """Every edensplit module a file imports: at the top, inside functions, under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycles():
    graph = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    assert "edensplit.servers.cloud.service" in graph["edensplit.cloud"]  # the graph sees real imports


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_modules_import_from_the_defining_module_not_a_package_root():
    """edensplit.model's and edensplit.wire's roots are not forwarding layers inside the project: edensplit, its
    tests and benchmarks import each name from the module defining it (edensplit/model/__init__.py keeps the
    documented public API for users; edensplit/wire/__init__.py is a docstring). bench.py, being split
    elsewhere, still imports from edensplit.model."""
    roots = {"edensplit.model", "edensplit.wire"}
    submodules = {m.rpartition(".")[2] for m in MODULES if m.rpartition(".")[0] in roots}
    allowed = {PACKAGE / "__init__.py", PACKAGE / "model" / "__init__.py", PACKAGE / "bench.py"}
    found = []
    for path in {*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")}:
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in roots and not node.level:
                names = {alias.name for alias in node.names} - submodules
                if names:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {sorted(names)}")
    assert found == []
    wire = ast.parse((PACKAGE / "wire" / "__init__.py").read_text())
    assert len(wire.body) == 1 and isinstance(wire.body[0], ast.Expr)  # the docstring alone
