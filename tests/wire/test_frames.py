"""The raw-frames container: named uint8 RGB frames round-trip exactly; anything else is INVALID_BLOB."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy
import torch

from edensplit.errors import ErrorCode, InputError
from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.wire.blob import pack_encoding
from edensplit.wire.buffers import answers_into
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, frames_answer, pack_frames, unpack_frames
from tests.conftest import make_frames
from tests.wire.helpers import wire_error

NAMES = ("frame0", "frame1")


@pytest.fixture(scope="module")
def pair() -> dict[str, np.ndarray]:
    f = make_frames(2, 30, 44)
    return {"frame0": f[0], "frame1": f[1]}


def craft(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    return safetensors.numpy.save(arrays, metadata={"format": "edensplit.frames", "version": "1", **(metadata or {})})


def test_round_trip_is_exact_with_metadata(pair):
    data = pack_frames(pair, {"seed": "7", "request_id": "abc"})
    frames, metadata = unpack_frames(data, NAMES)
    assert list(frames) == list(NAMES) and metadata == {"seed": "7", "request_id": "abc"}
    for name in NAMES:
        assert frames[name].dtype == np.uint8 and frames[name].flags.c_contiguous and frames[name].flags.writeable
        assert np.array_equal(frames[name], pair[name])


def test_names_come_back_in_the_requested_order(pair):
    frames, metadata = unpack_frames(pack_frames(pair), ["frame1", "frame0"])
    assert list(frames) == ["frame1", "frame0"] and metadata == {}


def test_one_frame_and_a_non_contiguous_input():
    frame = make_frames(1, 20, 24)[0][:, ::-1]
    frames, _ = unpack_frames(pack_frames({"middle": frame}), ["middle"])
    assert np.array_equal(frames["middle"], frame)


def test_media_type_names_the_container_it_labels(pair):
    """The type says what pack_frames writes: a body any safetensors reader opens (the "+safetensors"
    suffix) whose format, in the container's own metadata, is the vendor subtype."""
    data = pack_frames(pair)
    header_len = struct.unpack("<Q", data[:8])[0]
    metadata = json.loads(data[8: 8 + header_len])["__metadata__"]  # read per the safetensors spec, not by us
    assert f"application/vnd.{metadata['format']}+safetensors" == FRAMES_MEDIA_TYPE
    plain = safetensors.numpy.load(data)
    assert all(np.array_equal(plain[name], pair[name]) for name in NAMES)


def test_pack_refuses_what_is_not_a_frame(pair):
    with pytest.raises(InputError, match="frame0 must be uint8"):
        pack_frames({"frame0": pair["frame0"].astype(np.float32)})
    with pytest.raises(InputError, match="frame0 must be uint8"):
        pack_frames({"frame0": np.zeros((8, 8, 4), np.uint8)})
    with pytest.raises(InputError, match="reserved keys"):
        pack_frames(pair, {"format": "x"})
    with pytest.raises(InputError, match="at least one frame"):
        pack_frames({})


def test_missing_or_extra_names(pair):
    with wire_error(ErrorCode.INVALID_BLOB, "holds frames ['frame0'], expected ['frame0', 'frame1']"):
        unpack_frames(pack_frames({"frame0": pair["frame0"]}), NAMES)
    with wire_error(ErrorCode.INVALID_BLOB, "holds frames ['frame0', 'frame1'], expected ['frame0']"):
        unpack_frames(pack_frames(pair), ["frame0"])


@pytest.mark.parametrize(("array", "phrase"), [
    (np.zeros((8, 8, 3), np.float32), "frame1 must be uint8 [H, W, 3] RGB, got float32 [8, 8, 3]"),
    (np.zeros((8, 8, 4), np.uint8), "got uint8 [8, 8, 4]"),
    (np.zeros((8, 8), np.uint8), "got uint8 [8, 8]"),
    (np.zeros((0, 8, 3), np.uint8), "got uint8 [0, 8, 3]"),
])
def test_wrong_dtype_or_shape(pair, array, phrase):
    with wire_error(ErrorCode.INVALID_BLOB, phrase):
        unpack_frames(craft({"frame0": pair["frame0"], "frame1": array}), NAMES)


def test_wrong_format_or_version(pair):
    with wire_error(ErrorCode.INVALID_BLOB, "has unsupported version '9'"):
        unpack_frames(craft(pair, {"version": "9"}), NAMES)
    enc = FrameEncoding(torch.zeros(1, 4, 8), torch.zeros(1, 4, 8), torch.zeros(1), torch.ones(1), Geometry(32, 32))
    with wire_error(ErrorCode.INVALID_BLOB, "has format 'edensplit.enc_out', expected 'edensplit.frames'"):
        unpack_frames(pack_encoding(enc), NAMES)
    with wire_error(ErrorCode.INVALID_BLOB, "has format None"):
        unpack_frames(safetensors.numpy.save(pair), NAMES)


def test_unreadable_bytes(pair):
    with wire_error(ErrorCode.INVALID_BLOB, "frames container is not a safetensors container"):
        unpack_frames(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, NAMES)
    data = pack_frames(pair)
    with wire_error(ErrorCode.INVALID_BLOB, "frames container is truncated"):
        unpack_frames(data[:-1], NAMES)


def test_a_server_s_frames_answer_is_the_container_laid_out_where_its_allocator_says():
    frames = {"frame": make_frames(1, 24, 40)[0]}
    buffers: list[np.ndarray] = []

    def allocate(nbytes: int, media_type: str) -> np.ndarray:
        assert media_type == FRAMES_MEDIA_TYPE
        buffers.append(np.zeros(nbytes, np.uint8))
        return buffers[-1]

    with answers_into(allocate):
        view = frames_answer(frames, {"seed": "1"})
    assert view.obj is buffers[0] and bytes(view) == pack_frames(frames, {"seed": "1"})
    assert bytes(frames_answer(frames, {"seed": "1"})) == pack_frames(frames, {"seed": "1"})  # without: its own
