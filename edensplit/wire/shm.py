"""Shared memory between co-located stages: an encoding handed from the cloud to the edge through a POSIX shared
memory segment (a file of /dev/shm), with only a small handle crossing HTTP or WebSocket.

A segment holds a header line and the data: `EDSHM1 <header JSON>\\n<data>`, the header naming the client the
segment was made for, the data's media type and size, padded with spaces so that the data starts at a multiple of
ALIGN bytes. The data is written once (into a spare segment's map, or by pwrite) and read through a private
(copy-on-write) memory map: a reader's
tensors and frames are views of it, not copies. Its name,
`edensplit-shm-<uid>-<pid>-<start>-<token>`, says whose it is (the user, and the process that made it and when that
process started, so that a crashed maker's segments can be found and removed) and is unguessable (128 random
bits). Segments are created mode 0600, exclusively, never through a link; a reader checks the owner and mode before
trusting one.

Threat model: processes of the same user are trusted, as with a Unix socket; other users are not (they can neither
read a segment nor plant one that is taken for ours). The handle (`application/vnd.edensplit.shm-handle+json`) is
`{"segment": name, "size": n, "media_type": type}`, with the answer's `metadata` (what a JSON answer would say
beside the data: the grid, the difference) when a server made it.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import queue
import re
import secrets
import stat
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edensplit.errors import EdenError, ErrorCode

SHM_MEDIA_TYPE = "application/vnd.edensplit.shm-handle+json"
SHM_DIR = Path("/dev/shm")
MAGIC = b"EDSHM1 "
PREFIX = "edensplit-shm-"
NAME = re.compile(r"edensplit-shm-(\d+)-(\d+)-(\d+)-([0-9a-f]{32})")
MAX_HANDLE_BYTES = 4096
MAX_HEADER_BYTES = 4096
# How long map work started by an answer (unmapping a map let go, mapping the next spare) waits: each takes the
# process's map lock, which every page fault of the answer still in flight would wait for (measured: a 1080p
# encoding's encode step 10 -> 6 ms). A pause on a background thread, not a wait for a condition.
BACKGROUND_DELAY_S = 0.02
ALIGN = 64  # where a segment's data starts: a multiple of this (any tensor's items aligned in a view of it)


def available() -> bool:
    """Whether this machine has POSIX shared memory as files (Linux's /dev/shm)."""
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


@dataclass(frozen=True)
class Handle:
    """What travels instead of the data: the segment's name, the data's size and media type."""

    segment: str
    size: int
    media_type: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def dumps(self) -> bytes:
        fields: dict[str, Any] = {"segment": self.segment, "size": self.size, "media_type": self.media_type}
        if self.metadata:
            fields["metadata"] = self.metadata
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def loads(cls, data: bytes) -> Handle:
        """A handle from its JSON; SHM_INVALID if it is not one (a name of ours, a size, a media type)."""
        if len(data) > MAX_HANDLE_BYTES:
            raise invalid(f"a shared-memory handle is at most {MAX_HANDLE_BYTES} bytes, got {len(data)}")
        try:
            fields = json.loads(data)
            segment, size, media_type = fields["segment"], fields["size"], fields["media_type"]
            metadata = fields.get("metadata", {})
        except (ValueError, KeyError, TypeError, AttributeError):
            raise invalid("not a shared-memory handle: a JSON object with segment, size and media_type") from None
        if not isinstance(segment, str) or not NAME.fullmatch(segment):
            raise invalid("the handle's segment is not an edensplit segment name")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(media_type, str):
            raise invalid("the handle's size must be a non-negative integer and its media_type a string")
        if not isinstance(metadata, dict):
            raise invalid("the handle's metadata must be an object")
        return cls(segment, size, media_type, metadata)


def invalid(message: str) -> EdenError:
    return EdenError(message, code=ErrorCode.SHM_INVALID)


def segment_name(maker: str) -> str:
    """A new segment's name for this user and the process `maker` ("<pid>-<start time>")."""
    return f"{PREFIX}{os.getuid()}-{maker}-{secrets.token_hex(16)}"


def _header(client: str | None, media_type: str, size: int) -> bytes:
    """A segment's header line, padded so that the data after it starts at a multiple of ALIGN."""
    line = MAGIC + json.dumps({"client": client, "media_type": media_type, "size": size}).encode()
    return line + b" " * (-(len(line) + 1) % ALIGN) + b"\n"


def write_segment(name: str, data: bytes | bytearray | memoryview, client: str | None, media_type: str) -> Handle:
    """Create segment `name` (0600, exclusively, never through a link) holding `data` for `client` (None: a
    client's own segment, for whichever server it sends the handle to). Written with pwrite: the kernel copies into
    the new pages, which costs a third of filling a shared map of them here (every page a fault)."""
    source = memoryview(data).cast("B")
    fd = os.open(SHM_DIR / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    return _fill(fd, name, source, _header(client, media_type, source.nbytes), media_type)


def _fill(fd: int, name: str, source: memoryview, header: bytes, media_type: str) -> Handle:
    """Write `header` and `source` (bytes) into the open segment `fd` and close it; the segment removed if that
    fails."""
    try:
        os.pwrite(fd, header, 0)
        done = 0
        while done < source.nbytes:
            done += os.pwrite(fd, source[done:], len(header) + done)
    except BaseException:
        os.unlink(SHM_DIR / name)
        raise
    finally:
        os.close(fd)
    return Handle(name, source.nbytes, media_type)


class Spares:
    """Segments made ahead of need, for a process that makes many of the same length (a server's answers, a
    client's frames): each is created (0600, its final unguessable name), its pages allocated by
    `posix_fallocate` and mapped into this process (shared, MAP_POPULATE: every page in the page table) on a
    background thread, so that writing into one is a memcpy into mapped pages rather than allocating, zeroing
    and mapping them on the request's path (25 MB: 2.5 ms against 9 ms by pwrite into allocated pages, 20 ms
    into new ones, here); the map is let go on the background thread too. A spare is a
    segment nobody has a handle to; taking one for a write makes it an ordinary segment. At most `per_length`
    spares of each length asked for in the last `ttl_s` seconds, `max_bytes` in all; a length not asked for
    within `ttl_s` has its spares removed (`expire`), so that an idle process holds none. They carry their maker
    in their name like any segment, so a crashed process's spares are swept with its segments."""

    def __init__(self, maker: str, ttl_s: float = 30.0, per_length: int = 2, max_bytes: int = 256 * 2**20):
        self.maker, self.ttl_s, self.per_length, self.max_bytes = maker, ttl_s, per_length, max_bytes
        self._ready: dict[int, list[tuple[str, _Map]]] = {}  # file length -> spares (name, its map)
        self._pending: dict[int, int] = {}  # file length -> spares being made
        self._asked: dict[int, float] = {}  # file length -> when last asked for
        self._lock = threading.Lock()
        self._closed = False
        self._maker = ThreadPoolExecutor(1, thread_name_prefix="edensplit-shm-spares")

    @property
    def nbytes(self) -> int:
        """Bytes held in spares ready for use."""
        with self._lock:
            return sum(length * len(names) for length, names in self._ready.items())

    def write(self, data: bytes | bytearray | memoryview, client: str | None, media_type: str) -> Handle:
        """`write_segment` into a spare of the right length when there is one (else into a new segment), and a
        spare of that length made ahead for the next write."""
        source = memoryview(data).cast("B")
        draft = self.draft(source.nbytes, client, media_type)
        if not draft.in_place:
            draft.discard()
            return write_segment(segment_name(self.maker), source, client, media_type)
        try:  # numpy copies without the GIL, so a server's event loop runs on meanwhile
            draft.data[:] = np.frombuffer(source, np.uint8)
        except BaseException:
            draft.discard()
            raise
        return draft.commit()

    def draft(self, nbytes: int, client: str | None, media_type: str) -> Draft:
        """A segment of `nbytes` to fill in place: in a spare's map when one of that length is ready (and a spare
        made ahead for the next), else in this process's memory, written out on `commit`."""
        header = _header(client, media_type, nbytes)
        spare = self._take(len(header) + nbytes)
        if spare is not None and not (SHM_DIR / spare[0]).exists():  # removed under us
            spare[1].close()
            spare = None
        name, mapped = spare if spare is not None else ("", None)
        return Draft(self.maker, name, mapped, header, nbytes, client, media_type)

    def _take(self, length: int) -> tuple[str, _Map] | None:
        with self._lock:
            self._asked[length] = time.monotonic()
            ready = self._ready.get(length)
            spare = ready.pop() if ready else None
            wanted = self.per_length - len(self._ready.get(length, ())) - self._pending.get(length, 0)
            held = sum(n * (len(v) + self._pending.get(n, 0)) for n, v in self._ready.items())
            make = 0 if self._closed else max(0, min(wanted, (self.max_bytes - held) // max(length, 1)))
            self._pending[length] = self._pending.get(length, 0) + make
            for _ in range(make):  # under the lock: `close` cannot shut the maker down between check and submit
                self._maker.submit(self._make, length)
        return spare

    def _make(self, length: int) -> None:
        time.sleep(BACKGROUND_DELAY_S)  # out of the way of the answer that asked for it
        name, mapped = segment_name(self.maker), None
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.posix_fallocate(fd, 0, length)
                mapped = _Map(_mmap(length, mmap.MAP_SHARED | mmap.MAP_POPULATE, fd), length)
            finally:
                os.close(fd)
        except OSError:  # no room in /dev/shm, or no fallocate or map there: writes make new segments
            remove(name)
            name = ""
        with self._lock:
            self._pending[length] -= 1
            keep = bool(name) and not self._closed
            if keep:
                self._ready.setdefault(length, []).append((name, mapped))
        if name and not keep:
            _discard((name, mapped))

    def expire(self, now: float | None = None) -> int:
        """Remove the spares of lengths not asked for within `ttl_s` before `now` (time.monotonic()'s clock,
        default now); how many went."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [length for length, when in self._asked.items() if now - when > self.ttl_s]
            spares = [spare for length in stale for spare in self._ready.pop(length, [])]
            for length in stale:
                if not self._pending.get(length):
                    self._asked.pop(length, None)
        for spare in spares:
            _discard(spare)
        return len(spares)

    def close(self) -> None:
        """Remove every spare (and any being made); no more are made."""
        with self._lock:
            self._closed = True
        self._maker.shutdown(wait=True)
        with self._lock:
            spares = [spare for ready in self._ready.values() for spare in ready]
            self._ready.clear()
        for spare in spares:
            _discard(spare)


class Draft:
    """A segment being filled in place (`Spares.draft`): its `data` is a view of a spare's shared map (`in_place`)
    or, when none was ready, a buffer of this process; `commit` writes the header (or the whole segment) and
    gives the handle, `discard` lets it go. Nobody has its name before `commit`."""

    def __init__(self, maker: str, name: str, mapped: _Map | None, header: bytes, nbytes: int, client: str | None,
                 media_type: str):
        self.maker, self.name, self.header, self.nbytes = maker, name, header, nbytes
        self.client, self.media_type = client, media_type
        self._mapped = mapped
        self._data = mapped.array()[len(header):] if mapped is not None else None

    @property
    def in_place(self) -> bool:
        return self._mapped is not None

    @property
    def data(self) -> np.ndarray:
        """uint8 [nbytes]: where the segment's data goes (the same array each time)."""
        if self._data is None:
            self._data = np.empty(self.nbytes, np.uint8)
        return self._data

    def commit(self) -> Handle:
        if self._mapped is None:
            return write_segment(segment_name(self.maker), self.data, self.client, self.media_type)
        try:
            self._mapped.array()[:len(self.header)] = np.frombuffer(self.header, np.uint8)
        finally:
            self._let_go()
        return Handle(self.name, self.nbytes, self.media_type)

    def discard(self) -> None:
        if self._mapped is not None:
            remove(self.name)
        self._let_go()

    def _let_go(self) -> None:
        if self._mapped is not None:
            self._mapped.close()
        self._mapped = self._data = None


def _discard(spare: tuple[str, _Map]) -> None:
    name, mapped = spare
    mapped.close()
    remove(name)


def take_segment(handle: Handle, client: str | None, media_type: str) -> memoryview:
    """The data of the segment `handle` names, which is then removed (a handle is good for one use): a writable
    view of a private map of it (copy-on-write: what the reader changes is its own), so the tensors and frames
    read from it are views, not copies; the map lives as long as they do.

    SHM_NOT_FOUND if there is no such segment (unknown, used or expired); SHM_FORBIDDEN if it is not this user's,
    not private, or made for another client (`client` None: any, for the process that asked for it itself; a
    segment made for None is any client's: a client's own, its name the capability);
    SHM_INVALID if it is not an edensplit segment or holds other than the handle says. Processes of this user are
    trusted (the threat model): one that shrank a segment after it was taken would fault the reader."""
    path = SHM_DIR / handle.segment
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise EdenError(f"shared-memory segment {handle.segment} does not exist (unknown, already used, or expired: "
                        "ask the cloud for the encoding again)", code=ErrorCode.SHM_NOT_FOUND) from None
    except OSError as exc:
        raise EdenError(f"shared-memory segment {handle.segment} cannot be opened ({exc.strerror}): not ours",
                        code=ErrorCode.SHM_FORBIDDEN) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise EdenError(f"shared-memory segment {handle.segment} is not this user's private segment",
                            code=ErrorCode.SHM_FORBIDDEN)
        first = os.pread(fd, MAX_HEADER_BYTES, 0)
        end = first.find(b"\n")
        if not first.startswith(MAGIC) or end < 0:
            raise invalid(f"shared-memory segment {handle.segment} is not an edensplit segment")
        try:
            header = json.loads(first[len(MAGIC):end])
        except ValueError:
            raise invalid(f"shared-memory segment {handle.segment} has an unreadable header") from None
        if not isinstance(header, dict):
            raise invalid(f"shared-memory segment {handle.segment} has an unreadable header")
        if client is not None and header.get("client") not in (None, client):
            raise EdenError(f"shared-memory segment {handle.segment} was made for another client",
                            code=ErrorCode.SHM_FORBIDDEN)
        if header.get("size") != handle.size or header.get("media_type") != handle.media_type:
            raise invalid(f"shared-memory segment {handle.segment} does not hold what its handle says")
        if handle.media_type != media_type:
            raise invalid(f"the handle names {handle.media_type}, this request takes {media_type}")
        start = end + 1
        if info.st_size - start != handle.size:
            raise invalid(f"shared-memory segment {handle.segment} holds {max(info.st_size - start, 0)} bytes, its "
                          f"handle says {handle.size}")
        data = _mapped(fd, start, handle.size)
    finally:
        os.close(fd)
    remove(handle.segment)
    return data


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
MAP_FAILED = ctypes.c_void_p(-1).value


def _mapped(fd: int, start: int, size: int) -> memoryview:
    """Bytes start..start+size of the file as a writable view of a private map (its pages mapped as they are
    read: faster here than MAP_POPULATE, which maps them all at once), unmapped when the last view of it goes
    (mmap.mmap would hold a file descriptor as long: one per encoding a session keeps); for data that does not
    start at a multiple of ALIGN (a segment not written by `write_segment`), a copy."""
    if size == 0:
        return memoryview(bytearray())
    if start % ALIGN:
        return memoryview(bytearray(os.pread(fd, size, start)))
    length = start + size
    address = _mmap(length, mmap.MAP_PRIVATE, fd)
    return memoryview(_owned_pages(address, length)).cast("B")[start:]


def _owned_pages(address: int, length: int) -> ctypes.Array[ctypes.c_ubyte]:
    """The mapped bytes at `address` as a ctypes array that unmaps them (in the background) when it goes."""
    pages = (ctypes.c_ubyte * length).from_address(address)
    weakref.finalize(pages, _unmapper.unmap, address, length)
    return pages


def _mmap(length: int, flags: int, fd: int) -> int:
    """mmap(2) of a whole file read-write (through ctypes: the GIL is let go while the kernel works)."""
    address = _libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, 0)
    if address in (None, MAP_FAILED):
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return address


class _Map:
    """A spare's shared map: its pages as a numpy array. `close` lets go of it; it is unmapped (in the background)
    when nothing views it any more, so a view kept too long reads a segment, never unmapped memory."""

    def __init__(self, address: int, length: int):
        self._pages: np.ndarray | None = np.ctypeslib.as_array(_owned_pages(address, length))

    def array(self) -> np.ndarray:
        if self._pages is None:
            raise ValueError("this map was closed")
        return self._pages

    def close(self) -> None:
        self._pages = None


class _Unmapper:
    """Unmaps on a thread of its own: tearing down a 25 MB map takes 2 to 4 ms here, which would otherwise fall
    on the request that wrote a spare or dropped the last view of a taken segment."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def unmap(self, address: int, length: int) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="edensplit-shm-unmap", daemon=True)
                self._thread.start()
        self._queue.put((address, length))

    def _run(self) -> None:
        while True:
            pending = [self._queue.get()]
            time.sleep(BACKGROUND_DELAY_S)  # out of the way of the answer that let the map go
            while not self._queue.empty():
                pending.append(self._queue.get())
            for address, length in pending:
                _libc.munmap(address, length)


_unmapper = _Unmapper()


def remove(name: str) -> bool:
    """Remove segment `name` if it is still there; whether it was."""
    try:
        os.unlink(SHM_DIR / name)
    except FileNotFoundError:
        return False
    return True


def segments(uid: int | None = None) -> Iterator[tuple[str, str, int]]:
    """(name, maker "<pid>-<start>", size in bytes) of this user's edensplit segments."""
    uid = os.getuid() if uid is None else uid
    try:
        entries = list(os.scandir(SHM_DIR))
    except OSError:
        return
    for entry in entries:
        match = NAME.fullmatch(entry.name)
        if match and int(match.group(1)) == uid:
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
            yield entry.name, f"{match.group(2)}-{match.group(3)}", size


def header_of(name: str) -> dict[str, Any]:
    """A segment's header (for tests and diagnostics)."""
    with open(SHM_DIR / name, "rb") as f:
        return json.loads(f.readline(MAX_HEADER_BYTES)[len(MAGIC):])
