"""The README's set-up installs everything the package and its tests import: every third-party module imported
anywhere in `edensplit/` or `tests/` (inside functions too) belongs to a distribution that
`pip install -e '.[test]'` brings in (the package's requirements plus the `test` extra, followed through their
own requirements). A module that only an optional extra installs would pass on a machine where someone installed
that extra by hand and fail on a fresh one. Also: a missing OTLP exporter is one warning, not a crash."""

from __future__ import annotations

import ast
import importlib.metadata as md
import logging
import re
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

from edensplit import tracing
from tests.conftest import ROOT

OWN = {"edensplit", "tests", "cloud_server", "edge_server", "client", "inference_http", "inference_ws"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(root: str, extras: set[str]) -> set[str]:
    """The distributions `pip install root[extras]` installs: followed through each one's requirements, with the
    extras each asks for and the markers of this interpreter."""
    seen: set[str] = set()
    todo: list[tuple[str, set[str]]] = [(root, extras)]
    while todo:
        name, asked = todo.pop()
        key = (_norm(name), frozenset(asked))
        if key in seen:
            continue
        seen.add(key)
        for text in md.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not any(
                    req.marker.evaluate({**default_environment(), "extra": extra}) for extra in (asked or {""})):
                continue
            todo.append((req.name, set(req.extras)))
    return {name for name, _ in seen}


def imported_modules(*folders: Path) -> dict[str, Path]:
    """Top-level module name -> a file importing it, over every .py file of `folders` (all imports, any depth)."""
    found: dict[str, Path] = {}
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], path)
    return found


def test_every_imported_module_is_installed_by_the_readme_test_command():
    installed = requirement_closure("edensplit", {"test"})
    providers = md.packages_distributions()
    missing = {}
    for module, where in imported_modules(ROOT / "edensplit", ROOT / "tests").items():
        if module in sys.stdlib_module_names or module in OWN:
            continue
        dists = {_norm(d) for d in providers.get(module, [])}
        if not dists & installed:
            missing[module] = f"{where.relative_to(ROOT)} (from {sorted(dists) or 'nothing installed'})"
    assert not missing, f"imported but not installed by pip install -e '.[test]': {missing}"


def test_the_closure_follows_extras_and_leaves_out_what_is_not_asked_for():
    with_test = requirement_closure("edensplit", {"test"})
    bare = requirement_closure("edensplit", set())
    assert {"fastapi", "starlette", "torch", "pytest", "schemathesis", "opentelemetry-exporter-otlp-proto-http",
            "opentelemetry-exporter-otlp-proto-grpc"} <= with_test
    assert "pytest" not in bare and "schemathesis" not in bare and "starlette" in bare


def test_a_missing_exporter_is_one_warning_not_a_crash(monkeypatch, caplog):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # loopback, never used
    for protocol, module in (("http/protobuf", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
                             ("grpc", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter")):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edensplit.tracing"):
            assert tracing.setup_tracing("edensplit-test") is False
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert "exporter is not installed" in caplog.records[0].getMessage()
