"""A shared-memory segment: private to its user, made once under an unguessable name, taken once, and checked
before it is trusted (owner, mode, header, client, size)."""

from __future__ import annotations

import gc
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.processes import maker_of
from edensplit.wire import shm
from edensplit.wire.blob import pack_encoding, unpack_encoding
from edensplit.wire.shm import Handle, segment_name, take_segment, write_segment
from tests.conftest import wait_until

BLOB = "application/vnd.edensplit.enc-out+safetensors"


@pytest.fixture
def made():
    """A segment of 1000 bytes for client alice; removed after the test if it is still there."""
    handle = write_segment(segment_name(maker_of(os.getpid())), os.urandom(1000), "alice", BLOB)
    yield handle
    shm.remove(handle.segment)


def code_of(call) -> ErrorCode:
    with pytest.raises(EdenError) as err:
        call()
    return err.value.code


def test_a_segment_is_private_unguessable_and_good_for_one_use(made):
    info = os.lstat(shm.SHM_DIR / made.segment)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()
    assert shm.NAME.fullmatch(made.segment) and len(made.segment.rsplit("-", 1)[1]) == 32  # 128 random bits
    assert segment_name("1-2") != segment_name("1-2")
    data = take_segment(made, "alice", BLOB)
    assert len(data) == 1000
    assert not (shm.SHM_DIR / made.segment).exists()
    assert code_of(lambda: take_segment(made, "alice", BLOB)) == ErrorCode.SHM_NOT_FOUND


def test_a_handle_names_one_of_our_segments_and_nothing_else():
    for bad in (b"not json", b"[]", b'{"segment": "x"}',
                b'{"segment": "../../etc/passwd", "size": 1, "media_type": "a"}',
                b'{"segment": "edensplit-shm-0-1-2-' + b"0" * 32 + b'", "size": -1, "media_type": "a"}',
                b'{"segment": "edensplit-shm-0-1-2-' + b"0" * 32 + b'", "size": true, "media_type": "a"}',
                b"{" + b" " * 5000 + b"}"):
        assert code_of(lambda b=bad: Handle.loads(b)) == ErrorCode.SHM_INVALID, bad[:60]


def test_a_segment_for_another_client_or_holding_other_than_its_handle_says_is_refused(made):
    assert code_of(lambda: take_segment(made, "bob", BLOB)) == ErrorCode.SHM_FORBIDDEN
    longer = Handle(made.segment, made.size + 1, made.media_type)
    assert code_of(lambda: take_segment(longer, "alice", BLOB)) == ErrorCode.SHM_INVALID
    other = Handle(made.segment, made.size, "application/vnd.edensplit.frames+safetensors")
    assert code_of(lambda: take_segment(other, "alice", BLOB)) == ErrorCode.SHM_INVALID
    assert (shm.SHM_DIR / made.segment).exists()  # a refused take leaves it to its owner
    assert len(take_segment(made, None, BLOB)) == 1000  # None: the process that asked for it takes it itself


def test_a_file_that_is_not_our_private_segment_is_refused(tmp_path):
    name = segment_name(maker_of(os.getpid()))
    path = shm.SHM_DIR / name
    handle = Handle(name, 4, BLOB)
    try:
        path.write_bytes(b"EDSHM1 {}\nabcd")  # world-readable: not private
        path.chmod(0o644)
        assert code_of(lambda: take_segment(handle, None, BLOB)) == ErrorCode.SHM_FORBIDDEN
        path.chmod(0o600)
        path.write_bytes(b"just some bytes")  # private, not an edensplit segment
        assert code_of(lambda: take_segment(handle, None, BLOB)) == ErrorCode.SHM_INVALID
        path.unlink()
        target = tmp_path / "elsewhere"
        target.write_bytes(b"EDSHM1 {}\nabcd")
        path.symlink_to(target)  # a link planted at a segment's name is never followed
        assert code_of(lambda: take_segment(handle, None, BLOB)) == ErrorCode.SHM_FORBIDDEN
        path.unlink()
        if os.getuid() == 0:  # another user's segment (root can make one)
            path.write_bytes(b'EDSHM1 {"client": "alice", "media_type": "%s", "size": 4}\nabcd' % BLOB.encode())
            path.chmod(0o600)
            os.chown(path, 12345, 12345)
            assert code_of(lambda: take_segment(handle, "alice", BLOB)) == ErrorCode.SHM_FORBIDDEN
    finally:
        path.unlink(missing_ok=True)


def test_segments_are_made_exclusively_never_through_a_link(tmp_path):
    name = segment_name(maker_of(os.getpid()))
    target = tmp_path / "victim"
    target.write_bytes(b"keep me")
    (shm.SHM_DIR / name).symlink_to(target)
    try:
        with pytest.raises(FileExistsError):
            write_segment(name, b"data", "alice", BLOB)
        assert target.read_bytes() == b"keep me"
    finally:
        (shm.SHM_DIR / name).unlink()


def test_a_taken_segment_is_read_in_place_and_unmapped_with_its_last_view():
    """The data starts at a multiple of ALIGN; the tensors read from it are views of the reader's private map (what
    the reader changes is its own), not copies; the map holds no file descriptor and goes after the last view."""
    blob = pack_encoding(FrameEncoding(torch.ones(1, 4, 8), torch.ones(1, 4, 8), torch.zeros(1), torch.ones(1),
                                       Geometry(32, 32, 32, 16)), wire_dtype="float16")
    handle = write_segment(segment_name(maker_of(os.getpid())), blob, None, BLOB)
    descriptors = len(os.listdir("/proc/self/fd"))
    data = take_segment(handle, None, BLOB)
    assert bytes(data) == blob and not data.readonly and len(os.listdir("/proc/self/fd")) == descriptors

    def mapped() -> bool:
        return handle.segment in Path("/proc/self/maps").read_text()

    tokens = unpack_encoding(data).encoding.cond_dit
    address = np.frombuffer(data, np.uint8).ctypes.data
    assert address % shm.ALIGN == 0 and address <= tokens.data_ptr() < address + len(data)
    tokens += 1  # copy-on-write: the reader's own
    del data
    gc.collect()
    assert mapped() and tokens.max() == 2
    del tokens
    gc.collect()
    wait_until(lambda: not mapped())  # unmapped by a thread of its own, shortly after (out of a request's way)


def _mine(maker: str) -> set[str]:
    return {name for name, by, _ in shm.segments() if by == maker}


def _alive_maker() -> tuple[str, Callable[[], set[str]]]:
    """This process as a segments' maker, and its segments made since: a live maker, so that no server's sweep of
    dead makers' segments (other tests' servers run beside these) takes them, as it would a made-up maker's."""
    maker = maker_of(os.getpid())
    before = _mine(maker)
    return maker, lambda: _mine(maker) - before


def _primed(maker: str, payload: np.ndarray) -> shm.Spares:
    """Spares with one of `payload`'s length made ahead (a first write asks for the length)."""
    spares = shm.Spares(maker, per_length=1)
    shm.remove(spares.write(payload, "alice", BLOB).segment)
    wait_until(lambda: spares.nbytes > 0)
    return spares


def test_spares_are_allocated_ahead_private_and_written_in_place():
    maker, mine = _alive_maker()
    spares = shm.Spares(maker, per_length=2)
    try:
        payload = os.urandom(3000)
        first = spares.write(payload, "alice", BLOB)  # nothing ahead yet: a new segment, and two made for next time
        wait_until(lambda: len(mine() - {first.segment}) == 2 and not any(spares._pending.values()))
        ahead = mine() - {first.segment}
        lengths = {os.lstat(shm.SHM_DIR / name).st_size for name in ahead}
        assert len(lengths) == 1 and spares.nbytes == 2 * lengths.pop()
        for name in ahead:
            info = os.lstat(shm.SHM_DIR / name)
            assert stat.S_IMODE(info.st_mode) == 0o600 and shm.NAME.fullmatch(name)
        second = spares.write(payload[::-1], "alice", BLOB)
        assert second.segment in ahead  # written into pages allocated ahead
        assert bytes(take_segment(second, "alice", BLOB)) == payload[::-1]
        assert bytes(take_segment(first, "alice", BLOB)) == payload
        # Another length is another pool; a spare of the wrong length is never used.
        third = spares.write(os.urandom(10), "alice", BLOB)
        assert third.segment not in ahead
        shm.remove(third.segment)
    finally:
        spares.close()
    assert not mine()  # closing removes every spare, the ones given back too


def test_a_spare_comes_back_from_its_reader_and_is_reused_under_a_new_name():
    """The reader holds the segment (under a name of its own, `held_name`) while it views the data and gives it back
    (`<name>.back`) with its last view; the next write of that length is the same pages under a new unguessable
    name: nothing made, zeroed or mapped again, and the old handle finds nothing. No handle can name either."""
    maker, mine = _alive_maker()
    payload = np.frombuffer(os.urandom(5000), np.uint8)
    spares = _primed(maker, payload)
    try:
        lent = spares.write(payload, "alice", BLOB)
        inode = os.lstat(shm.SHM_DIR / lent.segment).st_ino
        data = take_segment(lent, "alice", BLOB)
        assert bytes(data) == payload.tobytes() and not data.readonly
        held = shm.SHM_DIR / shm.held_name(lent.segment, maker_of(os.getpid()))  # the reader's name, while it views
        back = shm.SHM_DIR / (lent.segment + shm.RETURNED)
        assert not (shm.SHM_DIR / lent.segment).exists() and os.lstat(held).st_ino == inode
        assert code_of(lambda: take_segment(lent, "alice", BLOB)) == ErrorCode.SHM_NOT_FOUND  # one use
        for name in (back.name, held.name):
            assert code_of(lambda n=name: Handle.loads(Handle(n, lent.size, BLOB).dumps())) == ErrorCode.SHM_INVALID
        wait_until(lambda: not any(spares._pending.values()))
        viewed = spares.write(payload[::-1].copy(), "bob", BLOB)  # while the reader views it: other pages
        assert os.lstat(shm.SHM_DIR / viewed.segment).st_ino != inode and bytes(data) == payload.tobytes()
        del data
        gc.collect()
        wait_until(back.exists)  # given back with the last view
        assert not held.exists() and os.lstat(back).st_ino == inode
        again = spares.write(payload[::-1].copy(), "bob", BLOB)
        assert os.lstat(shm.SHM_DIR / again.segment).st_ino == inode and not back.exists()
        assert code_of(lambda: take_segment(again, "alice", BLOB)) == ErrorCode.SHM_FORBIDDEN  # bob's now
        for handle in (again, viewed):
            assert bytes(take_segment(handle, "bob", BLOB)) == payload[::-1].tobytes()
        # A body a server did not take comes back too, from the process that wrote it.
        unread = spares.write(payload, None, BLOB)
        spares.give_back(unread.segment)
        assert not (shm.SHM_DIR / unread.segment).exists()
        given_back = os.lstat(shm.SHM_DIR / (unread.segment + shm.RETURNED)).st_ino
        reused = spares.write(payload, None, BLOB)
        assert os.lstat(shm.SHM_DIR / reused.segment).st_ino == given_back
        assert bytes(take_segment(reused, None, BLOB)) == payload.tobytes()
    finally:
        spares.close()
    gc.collect()
    assert not mine()


def test_a_spare_held_by_a_reader_that_died_comes_back():
    maker, mine = _alive_maker()
    spares = shm.Spares(maker, per_length=1)
    try:
        payload = os.urandom(3000)
        shm.remove(spares.write(payload, None, BLOB).segment)
        wait_until(lambda: spares.nbytes > 0)
        lent = spares.write(payload, None, BLOB)
        inode = os.lstat(shm.SHM_DIR / lent.segment).st_ino
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        os.rename(shm.SHM_DIR / lent.segment, shm.SHM_DIR / shm.held_name(lent.segment, f"{dead}-1"))  # its take
        wait_until(lambda: not any(spares._pending.values()))
        again = spares.write(payload, None, BLOB)
        assert os.lstat(shm.SHM_DIR / again.segment).st_ino == inode
        spares.give_back(again.segment)
    finally:
        spares.close()
    assert not mine()


def test_spares_of_a_length_not_asked_for_within_the_ttl_go_and_their_bytes_are_bounded():
    maker, mine = _alive_maker()
    spares = shm.Spares(maker, ttl_s=30.0, per_length=3, max_bytes=10_000)  # a TTL no stall outlasts
    try:
        shm.remove(spares.write(os.urandom(4000), None, BLOB).segment)
        wait_until(lambda: spares.nbytes > 0)
        wait_until(lambda: not any(spares._pending.values()))
        assert spares.nbytes <= 10_000 and len(mine()) == 2  # three wanted, two fit the bound
        assert spares.expire() == 0 and len(mine()) == 2  # asked for within the TTL: kept
        assert spares.expire(now=time.monotonic() + 31) == 2 and spares.nbytes == 0 and not mine()
    finally:
        spares.close()


def test_a_length_asked_for_now_takes_the_place_of_an_idle_length_never_of_one_in_use(monkeypatch):
    maker, mine = _alive_maker()
    spares = shm.Spares(maker, ttl_s=30.0, per_length=2, max_bytes=20_000)

    def ready() -> dict[int, int]:
        wait_until(lambda: not any(spares._pending.values()), what="spares being made")
        with spares._lock:
            return {length: len(made) for length, made in spares._ready.items() if made}

    monkeypatch.setattr(shm, "IDLE_LENGTH_S", 3600.0)  # no stall makes a length idle before the test says so
    try:
        shm.remove(spares.write(os.urandom(8000), None, BLOB).segment)  # two of its length fit, a third would not
        ((big, two),) = ready().items()
        assert two == 2 and 2 * big <= 20_000 < 3 * big
        shm.remove(spares.write(os.urandom(6000), None, BLOB).segment)  # the big length asked for just now
        assert ready() == {big: 2} and len(mine()) == 2  # in use: kept, and no room for the new length
        monkeypatch.setattr(shm, "IDLE_LENGTH_S", 0.0)  # the big length idle from now on
        shm.remove(spares.write(os.urandom(6000), None, BLOB).segment)
        ((small, count),) = ready().items()
        assert small < big and count == 2 and len(mine()) == 2  # the idle length's spares removed, not only let go
    finally:
        spares.close()
    assert not mine()


def test_a_draft_is_filled_in_a_spare_s_map_and_a_segment_only_once_committed():
    maker, mine = _alive_maker()
    payload = np.frombuffer(os.urandom(5000), np.uint8)
    spares = _primed(maker, payload)
    try:
        (ahead,) = mine()
        draft = spares.draft(payload.nbytes, "alice", BLOB)
        assert draft.in_place and draft.name == ahead
        draft.data[:] = payload  # written straight into the spare's pages
        handle = draft.commit()
        assert handle.segment == ahead and bytes(take_segment(handle, "alice", BLOB)) == payload.tobytes()
        # A discarded draft leaves no segment; with no spare ready a draft is this process's memory until committed.
        wait_until(lambda: spares.nbytes > 0)
        spares.draft(payload.nbytes, "alice", BLOB).discard()
        spares.close()
        assert not mine()
        late = spares.draft(payload.nbytes, "bob", BLOB)
        assert not late.in_place and not mine()
        late.data[:] = payload
        handle = late.commit()
        assert bytes(take_segment(handle, "bob", BLOB)) == payload.tobytes()
    finally:
        spares.close()
    assert not mine()
