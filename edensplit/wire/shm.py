"""Shared memory between co-located stages: an encoding handed from the cloud to the edge through a POSIX shared
memory segment (a file of /dev/shm), with only a small handle crossing HTTP or WebSocket.

A segment holds a header line and the data: `EDSHM1 <header JSON>\\n<data>`, the header naming the client the
segment was made for, the data's media type and size, padded with spaces so that the data starts at a multiple of
ALIGN bytes. The data is written once, into a spare segment's map (`Spares`: the reader holds the segment under a
name of its own while it views the data through a shared map it keeps, then gives it back for the maker's next
write, so its pages go round) or by pwrite (the reader maps it privately, copy-on-write). Either way the reader's
tensors and frames are views of a map, not copies. Its name,
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

import contextlib
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
from edensplit.processes import maker_of, runs

SHM_MEDIA_TYPE = "application/vnd.edensplit.shm-handle+json"
SHM_DIR = Path("/dev/shm")
MAGIC = b"EDSHM1 "
PREFIX = "edensplit-shm-"
NAME = re.compile(r"edensplit-shm-(\d+)-(\d+)-(\d+)-([0-9a-f]{32})")
RETURNED = ".back"  # a segment its reader gave back to its maker: no handle names it (NAME refuses the suffix)
HELD = ".held"  # a spare taken and still viewed by its reader, under the reader's name (its pid and start)
ON_DISK = re.compile(f"{NAME.pattern}(?:{re.escape(RETURNED)}|{re.escape(HELD)})?")
MAX_HANDLE_BYTES = 4096
MAX_HEADER_BYTES = 4096
# How long map work started by an answer (unmapping a map let go, mapping the next spare) waits: each takes the
# process's map lock, which every page fault of the answer still in flight would wait for (measured: a 1080p
# encoding's encode step 10 -> 6 ms). A pause on a background thread, not a wait for a condition.
BACKGROUND_DELAY_S = 0.02
HELD_LOOK_S = 1.0  # how often a maker looks whether the readers holding its spares still run
IDLE_LENGTH_S = 2.0  # a length not asked for this long gives its ready spares up to one asked for now
# Spares ready in all, per process: room for the four or five 100 MB answers (1080p float32 pairs) that go round
# with 2 requests in flight; at 256 MB each one coming back was let go and a new one made, so every answer was
# written into new pages and every reader mapped a new segment (docs/performance.md).
SPARE_BYTES = 512 * 2**20
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


def _header(client: str | None, media_type: str, size: int, back: bool = False) -> bytes:
    """A segment's header line, padded so that the data after it starts at a multiple of ALIGN; `back`: its reader
    gives the segment back to its maker for the next write once done with it (`Spares`)."""
    fields: dict[str, Any] = {"client": client, "media_type": media_type, "size": size}
    if back:
        fields["back"] = True
    line = MAGIC + json.dumps(fields).encode()
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


@dataclass
class _Spare:
    """A segment of the maker's, mapped into it for as long as it is reused: its current name, its map, its file's
    length and identity (checked when the segment comes back from a reader)."""

    name: str
    mapped: _Map
    length: int
    inode: tuple[int, int]
    held: Path | None = None  # where its reader holds it, when last looked

    def discard(self) -> None:
        self.mapped.close()
        remove(self.name)
        remove(self.name + RETURNED)


def held_name(name: str, reader: str) -> str:
    """Segment `name`'s name while `reader` ("<pid>-<start>") holds it: the reader's, so that if it dies the
    segment is swept with its own (and a maker that died meanwhile leaves nothing the reader cannot give back)."""
    return f"{PREFIX}{os.getuid()}-{reader}-{name.rsplit('-', 1)[1]}{HELD}"


def _held(name: str) -> Path | None:
    """Where segment `name` is while a reader holds it, if it is."""
    suffix = f"-{name.rsplit('-', 1)[1]}{HELD}"
    try:
        return next((Path(e.path) for e in os.scandir(SHM_DIR) if e.name.endswith(suffix)), None)
    except OSError:
        return None


class Spares:
    """Segments made ahead of need and reused, for a process that makes many of the same length (a server's
    answers, a client's frames). Each is created (0600, an unguessable name), its pages allocated by
    `posix_fallocate` and mapped into this process (shared, MAP_POPULATE: every page in the page table) on a
    background thread, so that writing into one is a memcpy into mapped pages rather than allocating, zeroing
    and mapping them on the request's path (25 MB: 2.5 ms against 9 ms by pwrite into allocated pages, 20 ms
    into new ones, here).

    A written spare's header asks its reader to give it back: the reader holds it under a name of its own
    (`held_name`) while it views the data, then renames it `<name>.back` (no handle can name either), and the
    next write of that length renames it to a new unguessable name and writes into the same mapped pages: in
    steady state no segment is made, zeroed, mapped or freed at all. A handle is still good for one use: its
    name is gone once taken. A spare not given back (its reader removed it, or it expired) is let go. At most
    `per_length` spares ready of each length asked for in the last `ttl_s` seconds made ahead (and as many more
    as came back, for as many requests as were in flight), `max_bytes` in all; a length not asked for within
    `ttl_s` has its spares removed (`expire`), so that an idle process holds none, and a length asked for now
    that would not fit takes the place of lengths idle for IDLE_LENGTH_S (`_make_room`). They carry their maker in
    their name like any segment, so a crashed process's spares, given back or not, are swept with its segments."""

    def __init__(self, maker: str, ttl_s: float = 30.0, per_length: int = 2, max_bytes: int = SPARE_BYTES):
        self.maker, self.ttl_s, self.per_length, self.max_bytes = maker, ttl_s, per_length, max_bytes
        self._ready: dict[int, list[_Spare]] = {}  # file length -> spares nobody has a handle to
        self._lent: dict[str, _Spare] = {}  # name -> a written spare, to come back from its reader
        self._pending: dict[int, int] = {}  # file length -> spares being made
        self._asked: dict[int, float] = {}  # file length -> when last asked for
        self._looked = 0.0  # when the readers holding lent spares were last looked at
        self._lock = threading.Lock()
        self._closed = False
        self._maker = ThreadPoolExecutor(1, thread_name_prefix="edensplit-shm-spares")

    @property
    def nbytes(self) -> int:
        """Bytes held in spares ready for use."""
        with self._lock:
            return sum(length * len(spares) for length, spares in self._ready.items())

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
        header = _header(client, media_type, nbytes, back=True)
        spare = self._take(len(header) + nbytes)
        if spare is not None and not (SHM_DIR / spare.name).exists():  # removed under us
            spare.mapped.close()
            spare = None
        return Draft(self, spare, header, nbytes, client, media_type)

    def give_back(self, name: str) -> None:
        """The segment `name`, written by this process for a request now answered, back for reuse whether the
        server took it or not (a segment not made from a spare is removed)."""
        with self._lock:
            lent = name in self._lent
        if not lent:
            remove(name)
            return
        with contextlib.suppress(FileNotFoundError):
            os.rename(SHM_DIR / name, SHM_DIR / (name + RETURNED))

    def _take(self, length: int) -> _Spare | None:
        with self._lock:
            self._asked[length] = time.monotonic()
            drop = self._make_room(length) + self._reclaim(length)
            ready = self._ready.get(length)
            spare = ready.pop() if ready else None
            wanted = self.per_length - len(self._ready.get(length, ())) - self._pending.get(length, 0)
            held = sum(n * (len(v) + self._pending.get(n, 0)) for n, v in self._ready.items())
            make = 0 if self._closed else max(0, min(wanted, (self.max_bytes - held) // max(length, 1)))
            self._pending[length] = self._pending.get(length, 0) + make
            for _ in range(make):  # under the lock: `close` cannot shut the maker down between check and submit
                self._maker.submit(self._make, length)
        for extra in drop:
            extra.discard()
        return spare

    def _make_room(self, length: int) -> list[_Spare]:
        """(Under the lock.) Room for `per_length` spares of `length` within `max_bytes`, made by taking out the
        ready spares of lengths not asked for within IDLE_LENGTH_S, the longest idle first: a process that moved on
        to another size (the next video, float32 after float16) gets spares for it at once, not once the old ones
        expire. Lengths in use together never take each other's. The spares to discard returned."""
        drop: list[_Spare] = []
        others = sum(n * (len(v) + self._pending.get(n, 0)) for n, v in self._ready.items() if n != length)
        room = self.max_bytes - self.per_length * length
        if others <= room:  # (every answer asks: nothing more to do while the sizes in use fit)
            return drop
        now = time.monotonic()
        idle = sorted((self._asked.get(n, 0.0), n) for n, v in self._ready.items()
                      if n != length and v and now - self._asked.get(n, 0.0) > IDLE_LENGTH_S)
        for _, other in idle:
            spares = self._ready[other]
            while spares and others > room:
                drop.append(spares.pop())
                others -= other
        return drop

    def _reclaim(self, length: int | None) -> list[_Spare]:
        """(Under the lock.) Lent spares (of `length`, or all) that came back, renamed to new names and made
        ready, and those that will not come back (removed, expired) let go; the spares to discard returned. A
        spare comes back when its reader lets go of its last view (`<name>.back`) or dies (while it held it,
        `held_name`); one still waiting for its reader, or held by a live one, stays lent."""
        drop: list[_Spare] = []
        now = time.monotonic()
        thorough = length is None or now - self._looked > HELD_LOOK_S  # whether held spares' readers still live
        if thorough:
            self._looked = now
        for spare in [s for s in self._lent.values() if length is None or s.length == length]:
            source = SHM_DIR / (spare.name + RETURNED)
            if source.exists():
                pass
            elif spare.held is not None and not thorough and spare.held.exists():
                continue  # held by its reader still
            elif (SHM_DIR / spare.name).exists():
                continue  # waiting for its reader
            else:
                spare.held = _held(spare.name)
                holder = ON_DISK.fullmatch(spare.held.name) if spare.held is not None else None
                if spare.held is not None and holder is not None:
                    if runs(f"{holder.group(2)}-{holder.group(3)}"):
                        continue  # a live reader views it still
                    source = spare.held  # its reader died, and its views with it
                elif not source.exists():  # (names only move forward: name, held, back)
                    del self._lent[spare.name]
                    spare.mapped.close()
                    continue
            fresh = segment_name(self.maker)
            try:
                os.rename(source, SHM_DIR / fresh)
            except FileNotFoundError:
                continue
            del self._lent[spare.name]
            spare.name, spare.held = fresh, None
            try:
                info = os.stat(SHM_DIR / fresh, follow_symlinks=False)
                ours = stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) == spare.inode
            except OSError:
                ours = False
            ready_bytes = sum(n * len(v) for n, v in self._ready.items())
            if ours and not self._closed and ready_bytes + spare.length <= self.max_bytes:
                self._ready.setdefault(spare.length, []).append(spare)  # last in, first out: the pages used last
            else:
                drop.append(spare)
        return drop

    def _lend(self, spare: _Spare) -> None:
        with self._lock:
            if not self._closed:
                self._lent[spare.name] = spare
                return
        spare.mapped.close()

    def _restore(self, spare: _Spare) -> None:
        """A spare taken for a draft and not written: ready again."""
        with self._lock:
            if not self._closed:
                self._ready.setdefault(spare.length, []).append(spare)
                return
        spare.discard()

    def _make(self, length: int) -> None:
        time.sleep(BACKGROUND_DELAY_S)  # out of the way of the answer that asked for it
        name, spare = segment_name(self.maker), None
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.posix_fallocate(fd, 0, length)
                info = os.fstat(fd)
                mapped = _Map(_mmap(length, mmap.MAP_SHARED | mmap.MAP_POPULATE, fd), length)
                spare = _Spare(name, mapped, length, (info.st_dev, info.st_ino))
            finally:
                os.close(fd)
        except OSError:  # no room in /dev/shm, or no fallocate or map there: writes make new segments
            remove(name)
        with self._lock:
            self._pending[length] -= 1
            keep = spare is not None and not self._closed
            if keep:
                self._ready.setdefault(length, []).append(spare)
        if spare is not None and not keep:
            spare.discard()

    def expire(self, now: float | None = None) -> int:
        """Take back the spares given back, and remove the spares of lengths not asked for within `ttl_s` before
        `now` (time.monotonic()'s clock, default now); how many were removed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            drop = self._reclaim(None)
            stale = [length for length, when in self._asked.items() if now - when > self.ttl_s]
            drop += [spare for length in stale for spare in self._ready.pop(length, [])]
            for length in stale:
                if not self._pending.get(length) and not any(s.length == length for s in self._lent.values()):
                    self._asked.pop(length, None)
        for spare in drop:
            spare.discard()
        return len(drop)

    def close(self) -> None:
        """Remove every spare, ready or given back (and any being made); no more are made. Segments still waiting
        for their reader are left to whoever holds their handle (a server's own sweep)."""
        with self._lock:
            self._closed = True
        self._maker.shutdown(wait=True)
        with self._lock:
            drop = [spare for ready in self._ready.values() for spare in ready]
            self._ready.clear()
            lent, self._lent = list(self._lent.values()), {}
        for spare in drop:
            spare.discard()
        for spare in lent:  # a reader's views of one stay good: its map outlives the name
            spare.mapped.close()
            remove(spare.name + RETURNED)
            held = _held(spare.name)
            if held is not None:
                remove(held.name)


class Draft:
    """A segment being filled in place (`Spares.draft`): its `data` is a view of a spare's shared map (`in_place`)
    or, when none was ready, a buffer of this process; `commit` writes the header (or the whole segment) and
    gives the handle, `discard` lets it go. Nobody has its name before `commit`."""

    def __init__(self, owner: Spares, spare: _Spare | None, header: bytes, nbytes: int, client: str | None,
                 media_type: str):
        self.owner, self.header, self.nbytes = owner, header, nbytes
        self.client, self.media_type = client, media_type
        self.name = spare.name if spare is not None else ""
        self._spare = spare
        self._data = spare.mapped.array()[len(header):] if spare is not None else None

    @property
    def in_place(self) -> bool:
        return self._spare is not None

    @property
    def data(self) -> np.ndarray:
        """uint8 [nbytes]: where the segment's data goes (the same array each time)."""
        if self._data is None:
            self._data = np.empty(self.nbytes, np.uint8)
        return self._data

    def commit(self) -> Handle:
        spare, self._spare = self._spare, None
        if spare is None:
            return write_segment(segment_name(self.owner.maker), self.data, self.client, self.media_type)
        self._data = None
        try:
            spare.mapped.array()[:len(self.header)] = np.frombuffer(self.header, np.uint8)
        except BaseException:
            spare.discard()
            raise
        self.owner._lend(spare)
        return Handle(spare.name, self.nbytes, self.media_type)

    def discard(self) -> None:
        spare, self._spare, self._data = self._spare, None, None
        if spare is not None:
            self.owner._restore(spare)


def take_segment(handle: Handle, client: str | None, media_type: str) -> memoryview:
    """The data of the segment `handle` names, whose name then goes (a handle is good for one use), writable and
    the reader's while it views it: a spare's (its header says "back") through this process's kept shared map,
    the segment held under the reader's name until the last view goes, then given back to its maker (renamed
    `<name>.back`); any other's through a private map of it (copy-on-write), the segment removed. Either way the
    tensors and frames read from it are views, not copies, and the map lives as long as they do.

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
        if header.get("back") is True:  # a spare: held while its views live, then given back to its maker
            held = SHM_DIR / held_name(handle.segment, maker_of(os.getpid()))
            try:
                os.rename(path, held)  # the take: a second taker of the handle finds nothing
            except FileNotFoundError:
                raise EdenError(f"shared-memory segment {handle.segment} was taken meanwhile (a handle is good for "
                                "one use)", code=ErrorCode.SHM_NOT_FOUND) from None
            back = (held, SHM_DIR / (handle.segment + RETURNED))
            try:
                if start % ALIGN or not handle.size:  # not laid out by this module: a copy, and back at once
                    data = _mapped(fd, start, handle.size)
                    _give_back(back)
                    return data
                return _views.view(held, info, start, back)
            except BaseException:
                _give_back(back)
                raise
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
    start at a multiple of ALIGN (a segment not written by this module), a copy."""
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


def _give_back(back: tuple[Path, Path]) -> None:
    with contextlib.suppress(OSError):
        os.rename(*back)


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
        self._lock = threading.RLock()  # re-entrant: a finalizer (a view let go) may run while it is held

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


def _map_shared(path: Path, key: tuple[int, int], length: int) -> int:
    """A shared writable map of the segment at `path`, which must still be the file `key` (device, inode) names."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != key or info.st_size != length:
            raise EdenError(f"shared-memory segment {path.name} changed while it was taken",
                            code=ErrorCode.SHM_INVALID)
        return _mmap(length, mmap.MAP_SHARED, fd)
    finally:
        os.close(fd)


@dataclass
class _View:
    address: int
    length: int
    used: float
    busy: bool = True


class _Views:
    """A reader's maps of the spares it took, kept for the next take of the same segment (its maker reuses the
    pages under a new name): the second time round there is no map to make, no page to fault in and none to
    unmap. A map is shared and writable: while a reader holds a segment nobody else reads it, and the maker
    writes every byte again before the next reader's turn. Kept while used within `idle_s`, `max_bytes` in all
    (a map keeps its file's pages even once the maker removed the file)."""

    def __init__(self, idle_s: float = 10.0, max_bytes: int = 512 * 2**20):
        self.idle_s, self.max_bytes = idle_s, max_bytes
        self._maps: dict[tuple[int, int], _View] = {}  # (device, inode) -> its map
        self._lock = threading.RLock()  # re-entrant: a finalizer (a view let go) may run while it is held

    def view(self, path: Path, info: os.stat_result, start: int, back: tuple[Path, Path]) -> memoryview:
        """The data of the segment at `path` (`info` the fstat it was checked by) from `start`, as a view of this
        process's map of it; `back` renamed once the view and everything made from it are gone."""
        key, length = (info.st_dev, info.st_ino), info.st_size
        with self._lock:
            kept = self._maps.get(key)
            if kept is not None and not kept.busy and kept.length == length:
                kept.busy = True  # at once: nothing may let go of it now
            else:  # none, or not ours to reuse: a map of its own
                kept = _View(_map_shared(path, key, length), length, time.monotonic())
                self._maps.setdefault(key, kept)
        pages = (ctypes.c_ubyte * length).from_address(kept.address)
        weakref.finalize(pages, self._release, key, kept, back)
        return memoryview(pages).cast("B")[start:]

    def _release(self, key: tuple[int, int], kept: _View, back: tuple[Path, Path]) -> None:
        with self._lock:
            kept.busy, kept.used = False, time.monotonic()
            if self._maps.get(key) is not kept:  # a second map of one file: not kept
                _unmapper.unmap(kept.address, kept.length)
        self.forget_idle()
        _give_back(back)

    def forget_idle(self) -> int:
        """Let go of the maps not used within `idle_s` (and the oldest, past `max_bytes`); how many."""
        now = time.monotonic()
        with self._lock:
            idle = sorted((v.used, k) for k, v in self._maps.items() if not v.busy)
            total, gone = sum(v.length for v in self._maps.values()), 0
            for used, key in idle:
                if now - used <= self.idle_s and total <= self.max_bytes:
                    break
                dropped = self._maps.pop(key)
                total, gone = total - dropped.length, gone + 1
                _unmapper.unmap(dropped.address, dropped.length)
        return gone


_views = _Views()


def forget_idle_views() -> int:
    """Let go of this process's maps of spares it took that were not used lately (a server's sweep calls it)."""
    return _views.forget_idle()


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
        match = ON_DISK.fullmatch(entry.name)
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
