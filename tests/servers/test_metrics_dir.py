"""The gunicorn workers' metrics directory (docs/scaling.md, `/metrics` across workers): a master's directory
inside this user's `<tmp>/edensplit-<uid>/` (0700), every part checked with lstat; a directory another user
could have planted or could read (a plain file, a symbolic link, another uid's, group/world-writable), or a
PROMETHEUS_MULTIPROC_DIR that is not this user's, is one warning and per-process metrics, never an exception;
dead masters' directories are swept. The gunicorn master is faked (this test process stands for it); the real
command is in tests/test_workers.py."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import values

from edensplit.model.checkpoint import load_model
from edensplit.servers import metrics
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.metrics import DIR_PREFIX, MULTIPROC_ENV, Metrics, enable_multiprocess, process_identity
from edensplit.settings import ServerSettings
from tests.conftest import TINY_CONFIG

UNUSED = "metrics directory not used"


@pytest.fixture()
def tmp(tmp_path, monkeypatch) -> Path:
    """A temporary directory of its own, this process as the gunicorn master, prometheus_client's mode and
    PROMETHEUS_MULTIPROC_DIR put back afterwards."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(metrics, "gunicorn_master", os.getpid)
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setenv(MULTIPROC_ENV, "unset-below")
    monkeypatch.delenv(MULTIPROC_ENV)  # recorded as unset: restored so whatever the code sets
    yield tmp_path
    values.close_all_multiprocess_files()


def user_root(tmp: Path) -> Path:
    return tmp / f"edensplit-{os.getuid()}"


def master_dirs(tmp: Path) -> list[Path]:
    """Where the master's directory is now, and where it was (directly in <tmp>, a name any user can predict)."""
    name = DIR_PREFIX + str(process_identity(os.getpid()))
    return [user_root(tmp) / name, tmp / name]


def per_process(caplog) -> None:
    """One warning, no multiprocess mode, and the metrics still render."""
    warned = [r for r in caplog.records if UNUSED in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    assert not getattr(values.ValueClass, "_multiprocess", False)
    m = Metrics("cloud")
    assert m.multiprocess_dir is None
    assert b"edensplit_info" in m.render()


def refused(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="edensplit.server")
    assert enable_multiprocess() is None
    per_process(caplog)


def test_a_private_directory_per_master_in_a_private_parent(tmp):
    path = enable_multiprocess()
    assert path == str(master_dirs(tmp)[0])
    for part in (user_root(tmp), Path(path)):
        assert part.is_dir() and not part.is_symlink() and (part.stat().st_mode & 0o777) == 0o700
    assert os.environ[MULTIPROC_ENV] == path and getattr(values.ValueClass, "_multiprocess", False)


def test_a_worker_file_not_yet_laid_out_is_left_for_the_next_scrape(tmp):
    """A booting gunicorn worker creates its metrics file, then gives it its size: a scrape in between found it
    empty and answered 500 (seen under load in tests/test_workers.py); it merges the others now."""
    path = enable_multiprocess()
    m = Metrics("cloud")
    m.requests.labels("/api/v1/encode", "POST", "200", "anonymous").inc()
    booting = Path(path) / f"counter_{os.getpid() + 1}.db"  # another worker's, created and still empty
    booting.touch()
    text = m.render().decode()
    assert ('edensplit_requests_total{client_name="anonymous",method="POST",route="/api/v1/encode",status="200"} 1.0'
            in text)
    booting.write_bytes(b"\0" * 16)  # laid out (no values yet): merged, still no error
    assert m.render().decode() == text


def test_a_plain_file_at_the_masters_path(tmp, caplog):
    user_root(tmp).mkdir(mode=0o700)
    for path in master_dirs(tmp):  # planted where the directory goes (and where it went)
        path.write_text("not a directory")
    refused(caplog)


@pytest.mark.parametrize("where", ["master", "parent"])
def test_a_symlink_at_the_masters_path_or_at_the_parent(tmp, caplog, where):
    target = tmp / "elsewhere"
    target.mkdir(mode=0o700)
    if where == "parent":
        user_root(tmp).symlink_to(target)
    else:
        user_root(tmp).mkdir(mode=0o700)
        for path in master_dirs(tmp):
            path.symlink_to(target)
    refused(caplog)
    assert list(target.iterdir()) == []


def test_a_parent_of_another_user(tmp, caplog, monkeypatch):
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 1)  # the directory below is then someone else's
    user_root(tmp).mkdir(mode=0o700)
    refused(caplog)


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o755], ids=oct)
def test_a_parent_others_can_open(tmp, caplog, mode):
    user_root(tmp).mkdir()
    user_root(tmp).chmod(mode)
    refused(caplog)


def test_a_given_directory_must_be_this_users(tmp, caplog, monkeypatch):
    given = tmp / "given"
    given.mkdir(mode=0o700)
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 1)
    refused(caplog)


@pytest.mark.parametrize("kind", ["world-writable", "symlink", "file"])
def test_a_given_directory_others_could_write(tmp, caplog, monkeypatch, kind):
    given = tmp / "given"
    if kind == "world-writable":
        given.mkdir()
        given.chmod(0o777)
    elif kind == "symlink":
        (tmp / "target").mkdir(mode=0o700)
        given.symlink_to(tmp / "target")
    else:
        given.write_text("")
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    refused(caplog)


def test_a_given_directory_of_this_user_is_used(tmp, monkeypatch):
    given = tmp / "given"
    given.mkdir(mode=0o750)
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    assert enable_multiprocess() == str(given)


def test_the_app_serves_metrics_with_a_refused_directory(tmp, caplog, monkeypatch):
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp))  # world-writable and sticky, like /tmp
    tmp.chmod(0o1777)
    caplog.set_level(logging.WARNING, logger="edensplit.server")
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())  # as when imported with the variable
    model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    with TestClient(create_cloud_app(ServerSettings(warmup=False), model)) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200 and "edensplit_workers_ready 1.0" in answer.text
    assert not list(tmp.glob("*.db"))
    assert len([r for r in caplog.records if UNUSED in r.getMessage()]) == 1


def test_dead_masters_directories_are_swept(tmp):
    root = user_root(tmp)
    root.mkdir(mode=0o700)
    alive = root / (DIR_PREFIX + str(process_identity(1)))
    dead = [root / (DIR_PREFIX + f"{2**22 + 11}-5"), root / (DIR_PREFIX + f"{os.getpid()}-1")]  # no such pid; reused
    for path in (alive, *dead):
        path.mkdir(mode=0o700)
        (path / "counter_1.db").write_bytes(b"")
    assert enable_multiprocess() == str(master_dirs(tmp)[0])
    assert alive.is_dir() and not any(path.exists() for path in dead)
