"""Private folders for a job's state (`PrivateDir`): made mode 0700, trusted only if they are this user's.

A job's state lives next to its output, and the output directory may be shared (a project folder, /tmp): whoever
else can write there could plant a symbolic link where the state goes, or a folder of their own holding frames
to be spliced into the output. So a state folder is used only if `lstat` says it is a real directory (not a
symbolic link), owned by this user and writable by no one else; anything else is refused with an `EdenError`
(one line from the CLI) before anything in it is read, written or removed. A folder that passes is held open
by descriptor, and every file in it is opened, created (`O_EXCL`, under an unpredictable temporary name),
renamed and removed relative to that descriptor with `O_NOFOLLOW`: no path is resolved again, so neither a
link planted later nor the folder being swapped for one redirects a write. A folder it makes is 0700 (an own
folder left by an older version is made so too), so no one else can add to it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

from edensplit.errors import EdenError, ErrorCode

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as a file opens at once (then fails the regular-file check)


def owner_uid() -> int | None:
    """The user whose folders are trusted (the effective uid; None where there is none). A seam for tests."""
    return os.geteuid() if hasattr(os, "geteuid") else None


def untrusted(st: os.stat_result) -> str | None:
    """Why a folder with this `lstat` must not hold a job's state, or None if it may."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    uid = owner_uid()
    if uid is not None and st.st_uid != uid:
        return f"is owned by another user (uid {st.st_uid}, not {uid})"
    if st.st_mode & 0o022:
        return f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


class UnsafeState(EdenError):
    """A state path that is not this user's private folder: refused, nothing in it touched."""

    code = ErrorCode.INVALID_PARAMETER


def _refuse(path: Path, problem: str) -> UnsafeState:
    if problem == "is a symbolic link":
        with contextlib.suppress(OSError):
            problem += f" (to {os.readlink(path)})"
    return UnsafeState(f"refusing the job state {path}: it {problem}, not a private folder of this user's; nothing "
                       "in it was read or changed (remove it if it is yours, or use another --output_dir)")


def _lstat(name: str, dir_fd: int | None) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


class PrivateDir:
    """A folder of this user's, open by descriptor; names inside it are single path components."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def open(cls, path: Path, *, parent: PrivateDir | None = None, create: bool = True,
             tighten: bool = True) -> PrivateDir | None:
        """The folder `path` (inside `parent`, by its descriptor, if given), made 0700 if missing and `create`
        (None if missing otherwise). Refused (`UnsafeState`) unless it is a real directory of this user's that
        no one else can write and that holds no symbolic link; with `tighten`, an older one is made 0700."""
        name, dir_fd = (path.name, parent.fd) if parent is not None else (str(path), None)
        st = _lstat(name, dir_fd)
        if st is None:
            if not create:
                return None
            with contextlib.suppress(FileExistsError):  # made meanwhile: checked like any other
                os.mkdir(name, 0o700, dir_fd=dir_fd)
            st = _lstat(name, dir_fd)
            if st is None:
                raise _refuse(path, "vanished while it was made")
        problem = untrusted(st)
        if problem:
            raise _refuse(path, problem)
        try:
            fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            again = _lstat(name, dir_fd)
            if again is None or not os.path.samestat(st, again):  # replaced between the lstat and the open
                raise _refuse(path, "changed while it was checked") from None
            raise _refuse(path, f"cannot be opened ({exc.strerror})") from None
        opened = cls(path, fd)
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or untrusted(now):
                raise _refuse(path, "changed while it was checked")
            with os.scandir(fd) as entries:
                link = next((e.name for e in entries if e.is_symlink()), None)
            if link is not None:
                raise _refuse(path, f"holds a symbolic link ({link})")
            if tighten and stat.S_IMODE(now.st_mode) & 0o077:
                os.fchmod(fd, 0o700)
        except BaseException:
            opened.close()
            raise
        return opened

    def __enter__(self) -> PrivateDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def subdir(self, name: str, *, create: bool = True, tighten: bool = True) -> PrivateDir | None:
        """The folder `name` in this one, checked as `open` checks."""
        return PrivateDir.open(self.path / name, parent=self, create=create, tighten=tighten)

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def open_file(self, name: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
        """A file descriptor for `name`, never through a symbolic link (OSError if `name` is one)."""
        return os.open(name, flags | _NOFOLLOW | _CLOEXEC, mode, dir_fd=self.fd)

    def read_bytes(self, name: str) -> bytes | None:
        """The content of the regular file `name`, or None if it is missing, a link or anything else."""
        try:
            fd = self.open_file(name, os.O_RDONLY | _NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fp:
            return fp.read() if stat.S_ISREG(os.fstat(fp.fileno()).st_mode) else None

    def write_temp(self, name: str, write: Callable[[IO[bytes]], object]) -> str:
        """A new file, created exclusively under an unpredictable name (`.NAME.RANDOM.tmp`), filled by
        `write`; its name, to `replace` or `unlink`."""
        tmp = f".{name}.{secrets.token_hex(8)}.tmp"
        fd = self.open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the folder is private: umask's mode
        try:
            with os.fdopen(fd, "wb") as fp:
                write(fp)
        except BaseException:
            self.unlink(tmp)
            raise
        return tmp

    def write_atomic(self, name: str, write: Callable[[IO[bytes]], object]) -> None:
        """`name` replaced, whole or not at all, by what `write` writes."""
        self.replace(self.write_temp(name, write), name)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def move_out(self, name: str, target: Path) -> None:
        """Rename `name` to `target`, outside this folder (a link there is replaced, not followed)."""
        os.replace(name, target, src_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def remove(self, name: str) -> None:
        """Remove the file or folder `name`, if there (a link is removed, never followed)."""
        st = _lstat(name, self.fd)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=self.fd)
        else:
            self.unlink(name)

    def still_at_path(self) -> bool:
        """Whether `path` still names this folder (not a link or another folder swapped in since)."""
        st = _lstat(str(self.path), None)
        return st is not None and stat.S_ISDIR(st.st_mode) and os.path.samestat(st, os.fstat(self.fd))

    def remove_all(self) -> None:
        """Remove the folder and everything in it, if its path still names it."""
        if self.fd >= 0 and self.still_at_path():
            shutil.rmtree(self.path, ignore_errors=True)
