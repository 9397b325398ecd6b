"""The enc_out blob: exact float32 round trips, the wire dtypes, metadata, and every corruption refused."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.torch
import torch

from edensplit.errors import ErrorCode, InputError
from edensplit.model.checkpoint import load_model
from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.model.seeds import make_noise
from edensplit.model.stages import encode_frames, frame_difference, interpolate, to_uint8
from edensplit.wire import codecs
from edensplit.wire.blob import BLOB_MEDIA_TYPE, encoding_view, pack_encoding, read_blob_header, unpack_encoding
from edensplit.wire.buffers import answers_into
from tests.conftest import TINY_CONFIG, make_frames
from tests.wire.helpers import wire_error

HEIGHT, WIDTH = 40, 56  # not a multiple of 32: the blob carries real padding (12, 12, 4, 4)


@pytest.fixture(scope="module")
def model():
    return load_model(None, TINY_CONFIG, allow_random=True)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return make_frames(2, HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def pair(model, frames) -> FrameEncoding:
    return encode_frames(model, frames)


@pytest.fixture(scope="module")
def parts(pair) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a valid float32 pair blob, to tamper with."""
    blob = pack_encoding(pair, 0.5, extra={"request_id": "r1"})
    return safetensors.torch.load(blob), read_blob_header(blob)


def craft(parts, tensors=None, metadata=None, drop=()) -> bytes:
    """A blob from a valid one's parts with some tensors / metadata replaced (None removes) or dropped."""
    t = {**parts[0], **(tensors or {})}
    m = {**parts[1], **(metadata or {})}
    return safetensors.torch.save({k: v for k, v in t.items() if k not in drop},
                                  metadata={k: v for k, v in m.items() if v is not None})


def _encodings_equal(a: FrameEncoding, b: FrameEncoding) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("cond_dit", "cond_dec", "mean", "std"))


# --- round trips -----------------------------------------------------------------------------------

def test_float32_round_trip_is_bit_exact(pair):
    out = unpack_encoding(pack_encoding(pair), frames=2)
    assert out.wire_dtype == "float32" and out.difference is None and out.extra == {}
    assert out.encoding.geometry == pair.geometry == Geometry(HEIGHT, WIDTH)
    assert _encodings_equal(out.encoding, pair)
    assert out.encoding.cond_dit.device.type == "cpu"


def test_split_through_the_blob_equals_local(model, frames, pair):
    diff = frame_difference(frames[0], frames[1])
    out = unpack_encoding(pack_encoding(pair, float(diff[0])), frames=2)
    noise = make_noise(0, pair.geometry.latent_tokens, 16)
    enc = out.encoding
    split = interpolate(model, enc[0], enc[1], torch.tensor([out.difference]), noise)
    local = interpolate(model, pair[0], pair[1], diff, noise)
    assert np.array_equal(to_uint8(split), to_uint8(local))


@pytest.mark.parametrize(("wire_dtype", "tol"), [("float32", 0.0), ("float16", 1e-3), ("bfloat16", 8e-3)])
def test_every_wire_dtype_round_trips_within_its_precision(pair, wire_dtype, tol):
    blob = pack_encoding(pair, wire_dtype=wire_dtype)
    assert read_blob_header(blob)["wire_dtype"] == wire_dtype
    out = unpack_encoding(blob)
    assert out.wire_dtype == wire_dtype
    for name in ("cond_dit", "cond_dec"):
        got, want = getattr(out.encoding, name), getattr(pair, name)
        assert got.dtype == codecs.get(wire_dtype).dtype
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol * want.abs().max().item())
    assert out.encoding.mean.dtype == out.encoding.std.dtype == torch.float32
    assert torch.equal(out.encoding.mean, pair.mean) and torch.equal(out.encoding.std, pair.std)


@pytest.mark.parametrize("wire_dtype", ["float32", "float16"])
def test_a_blob_is_laid_out_where_the_answer_s_allocator_says(pair, wire_dtype):
    """The shared-memory adapter's seam: inside `answers_into`, the tokens are cast straight into its buffer."""
    asked: list[tuple[int, str]] = []
    buffers: list[np.ndarray] = []

    def allocate(nbytes: int, media_type: str) -> np.ndarray:
        asked.append((nbytes, media_type))
        buffers.append(np.full(nbytes, 0xAB, np.uint8))
        return buffers[-1]

    with answers_into(allocate):
        view = encoding_view(pair, 0.5, wire_dtype)
    expected = pack_encoding(pair, 0.5, wire_dtype)
    assert asked == [(len(expected), BLOB_MEDIA_TYPE)] and view.obj is buffers[0]
    assert bytes(view) == expected  # every byte written, none left as the buffer held it
    assert encoding_view(pair, 0.5, wire_dtype).obj is not buffers[0]  # outside the block: a buffer of its own


def test_half_precision_blobs_are_about_half_the_size(pair):
    sizes = {dt: len(pack_encoding(pair, wire_dtype=dt)) for dt in codecs.names()}
    assert 0.45 < sizes["float16"] / sizes["float32"] < 0.6
    assert 0.45 < sizes["bfloat16"] / sizes["float32"] < 0.6
    assert sizes["int8"] < 0.4 * sizes["float32"]  # D = 32 here: the per-token scales weigh 1/8


def test_full_size_pair_blob_size():
    """A 480x854 pair with the released model (D=768): ~19.9 MB float32, half that float16."""
    geo = Geometry(480, 854)
    assert geo.grid == (30, 54)
    n, d = geo.tokens, 768
    zeros = torch.zeros(2, n, d)
    enc = FrameEncoding(zeros, zeros.clone(), torch.zeros(2), torch.ones(2), geo)
    payload = 2 * 2 * n * d * 4
    f32, f16 = len(pack_encoding(enc)), len(pack_encoding(enc, wire_dtype="float16"))
    assert payload <= f32 < payload * 1.01
    assert payload / 2 <= f16 < payload / 2 * 1.01
    int8 = len(pack_encoding(enc, wire_dtype="int8"))  # a byte per value and a float32 scale per token
    assert payload / 4 * (1 + 4 / d) <= int8 < payload / 4 * (1 + 4 / d) * 1.01


# --- int8: symmetric per-token quantisation --------------------------------------------------------


def test_int8_round_trips_within_half_a_step_per_token():
    torch.manual_seed(0)
    geo = Geometry(HEIGHT, WIDTH)
    tokens = torch.randn(2, geo.tokens, 32) * torch.logspace(-3, 2, geo.tokens)[None, :, None]  # wide range
    tokens[0, 3] = 0  # an all-zero token
    enc = FrameEncoding(tokens, -tokens, torch.rand(2), torch.rand(2) + 0.1, geo)
    out = unpack_encoding(pack_encoding(enc, 0.5, wire_dtype="int8"))
    assert out.wire_dtype == "int8" and out.difference == 0.5
    for name in ("cond_dit", "cond_dec"):
        got, want = getattr(out.encoding, name), getattr(enc, name)
        assert got.dtype == torch.float32
        step = want.abs().amax(dim=-1, keepdim=True) / 127  # each token's own scale
        assert bool(((got - want).abs() <= step / 2 + 1e-7 * want.abs()).all())  # the stated bound
        assert bool((got[0, 3] == 0).all())
    assert torch.equal(out.encoding.mean, enc.mean) and torch.equal(out.encoding.std, enc.std)


@pytest.fixture(scope="module")
def int8_parts(pair) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    blob = pack_encoding(pair, 0.5, wire_dtype="int8")
    return safetensors.torch.load(blob), read_blob_header(blob)


def test_an_int8_blob_with_bad_scales_is_refused(int8_parts):
    tensors = int8_parts[0]
    with wire_error(ErrorCode.INVALID_BLOB, "expected ['cond_dec', 'cond_dec_scale', 'cond_dit', 'cond_dit_scale'"):
        unpack_encoding(craft(int8_parts, drop=("cond_dit_scale",)))
    with wire_error(ErrorCode.SHAPE_MISMATCH, "tensor cond_dec_scale is [2, 15], expected [frames, ph*pw]"):
        unpack_encoding(craft(int8_parts, tensors={"cond_dec_scale": tensors["cond_dec_scale"][:, 1:].contiguous()}))
    nan = tensors["cond_dit_scale"].clone()
    nan[0, 0] = torch.nan
    with wire_error(ErrorCode.INVALID_BLOB, "tensor cond_dit_scale holds non-finite values"):
        unpack_encoding(craft(int8_parts, tensors={"cond_dit_scale": nan}))
    with wire_error(ErrorCode.INVALID_BLOB, "cond_dit_scale holds scales that are not positive"):
        unpack_encoding(craft(int8_parts, tensors={"cond_dit_scale": -tensors["cond_dit_scale"]}))
    with wire_error(ErrorCode.INVALID_BLOB, "tensor cond_dit_scale is float16, expected float32"):
        unpack_encoding(craft(int8_parts, tensors={"cond_dit_scale": tensors["cond_dit_scale"].half()}))
    with wire_error(ErrorCode.INVALID_BLOB, "tensor cond_dit is float32, expected int8"):
        unpack_encoding(craft(int8_parts, tensors={"cond_dit": tensors["cond_dit"].float()}))
    with wire_error(ErrorCode.INVALID_BLOB, "holds tensors"):  # a float blob claiming int8: no scales
        unpack_encoding(craft((safetensors.torch.load(pack_encoding(pair_of(int8_parts))), int8_parts[1])))


def pair_of(parts) -> FrameEncoding:
    """The (dequantised) encoding an int8 blob's parts stand for."""
    return unpack_encoding(craft(parts)).encoding


def test_single_frame_blob(pair):
    blob = pack_encoding(pair[1])
    assert read_blob_header(blob)["frames"] == "1"
    out = unpack_encoding(blob, frames=1)
    assert _encodings_equal(out.encoding, pair[1])


@pytest.mark.parametrize("difference", [0.9876543210123456, 1 / 3, -1.0, 1.0, 0.0, 5e-324])
def test_difference_round_trips_exactly(pair, difference):
    out = unpack_encoding(pack_encoding(pair, difference))
    assert out.difference == difference and type(out.difference) is float


def test_difference_none_is_absent_from_the_header(pair):
    blob = pack_encoding(pair, None)
    assert "difference" not in read_blob_header(blob)
    assert unpack_encoding(blob).difference is None


def test_difference_from_a_tensor(frames, pair):
    diff = frame_difference(frames[0], frames[1])
    assert unpack_encoding(pack_encoding(pair, diff[0])).difference == diff[0].item()


def test_header_describes_the_blob(pair):
    header = read_blob_header(pack_encoding(pair, 0.25, "float16", {"request_id": "abc"}))
    assert header == {"format": "edensplit.enc_out", "version": "1", "height": "40", "width": "56",
                      "multiple": "32", "patch": "16", "pad": "12,12,4,4", "grid": "4,4", "frames": "2",
                      "hidden_dim": "32", "wire_dtype": "float16", "difference": "0.25", "request_id": "abc"}


def test_extra_metadata_round_trips(pair):
    extra = {"request_id": "r-42", "fps": "29.97", "note": "ünïcødé"}
    assert unpack_encoding(pack_encoding(pair, extra=extra)).extra == extra


# --- what pack refuses -----------------------------------------------------------------------------

def test_pack_refuses_reserved_extra_keys_and_unknown_dtypes(pair):
    with pytest.raises(InputError, match="reserved keys \\['grid'\\]"):
        pack_encoding(pair, extra={"grid": "1,1"})
    with pytest.raises(InputError, match="unknown wire dtype 'int4'"):
        pack_encoding(pair, wire_dtype="int4")
    with pytest.raises(InputError, match="difference"):
        pack_encoding(pair, float("nan"))


def test_pack_refuses_tokens_that_do_not_fit_the_geometry(pair):
    bad = FrameEncoding(pair.cond_dit[:, :-1], pair.cond_dec[:, :-1], pair.mean, pair.std, pair.geometry)
    with pytest.raises(InputError) as info:
        pack_encoding(bad)
    assert info.value.code == ErrorCode.SHAPE_MISMATCH


# --- corrupt input ---------------------------------------------------------------------------------

def test_random_bytes(parts):
    rng = np.random.default_rng(0)
    with wire_error(ErrorCode.INVALID_BLOB, "is not a safetensors container"):
        unpack_encoding(rng.integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with wire_error(ErrorCode.INVALID_BLOB, "only 3 bytes"):
        unpack_encoding(b"abc")


def test_truncated_blob(pair):
    blob = pack_encoding(pair)
    with wire_error(ErrorCode.INVALID_BLOB, "enc_out is truncated"):
        unpack_encoding(blob[:-100])
    with wire_error(ErrorCode.INVALID_BLOB, "enc_out is truncated"):
        unpack_encoding(blob[:50])


def test_trailing_bytes(pair):
    with wire_error(ErrorCode.INVALID_BLOB, "unexpected bytes after"):
        unpack_encoding(pack_encoding(pair) + b"\0" * 16)


def test_header_claiming_a_huge_length():
    with wire_error(ErrorCode.INVALID_BLOB, "header claims"):
        unpack_encoding(struct.pack("<Q", 2**62) + b"{}")
    with wire_error(ErrorCode.INVALID_BLOB, "header claims"):
        read_blob_header(b"\xff" * 64)


def test_header_that_is_not_json():
    with wire_error(ErrorCode.INVALID_BLOB, "not valid JSON"):
        unpack_encoding(struct.pack("<Q", 8) + b"{not js}")


def test_header_with_duplicate_keys():
    header = b'{"__metadata__": {"a": "1"}, "__metadata__": {"a": "2"}}'
    with wire_error(ErrorCode.INVALID_BLOB, "not valid JSON"):
        unpack_encoding(struct.pack("<Q", len(header)) + header)


@pytest.mark.parametrize(("metadata", "phrase"), [
    ({"format": "edensplit.frames"}, "has format 'edensplit.frames'"),
    ({"format": None}, "has format None"),
    ({"version": "2"}, "unsupported version '2'"),
])
def test_wrong_format_or_version(parts, metadata, phrase):
    blob = craft(parts, metadata=metadata)
    with wire_error(ErrorCode.INVALID_BLOB, phrase):
        unpack_encoding(blob)
    with wire_error(ErrorCode.INVALID_BLOB, phrase):
        read_blob_header(blob)


def test_unknown_wire_dtype(parts):
    with wire_error(ErrorCode.INVALID_BLOB, "unknown wire_dtype 'int4'"):
        unpack_encoding(craft(parts, metadata={"wire_dtype": "int4"}))


def test_cond_tensor_not_in_the_declared_dtype(parts):
    with wire_error(ErrorCode.INVALID_BLOB, "tensor cond_dit is float32, expected float16"):
        unpack_encoding(craft(parts, metadata={"wire_dtype": "float16"}))
    half = {"cond_dec": parts[0]["cond_dec"].half()}
    with wire_error(ErrorCode.INVALID_BLOB, "tensor cond_dec is float16, expected float32"):
        unpack_encoding(craft(parts, tensors=half))


def test_stats_must_be_float32(parts):
    with wire_error(ErrorCode.INVALID_BLOB, "tensor std is float16, expected float32"):
        unpack_encoding(craft(parts, tensors={"std": parts[0]["std"].half()}))


def test_missing_or_extra_tensors(parts):
    with wire_error(ErrorCode.INVALID_BLOB, "holds tensors ['cond_dec', 'cond_dit', 'std']"):
        unpack_encoding(craft(parts, drop=("mean",)))
    with wire_error(ErrorCode.INVALID_BLOB, "'payload'"):
        unpack_encoding(craft(parts, tensors={"payload": torch.zeros(3)}))


@pytest.mark.parametrize(("name", "cut", "phrase"), [
    ("cond_dit", lambda t: t[:, :-1], "tensor cond_dit has shape [2, 15, 32], expected [2, 16, 32]"),
    ("cond_dec", lambda t: t[..., :16], "tensor cond_dec has shape [2, 16, 16], expected [2, 16, 32]"),
    ("cond_dit", lambda t: t[0], "tensor cond_dit has shape [16, 32]"),
    ("mean", lambda t: t[:1], "tensor mean has shape [1], expected [2]"),
])
def test_tensor_with_a_wrong_shape(parts, name, cut, phrase):
    blob = craft(parts, tensors={name: cut(parts[0][name]).contiguous()})
    with wire_error(ErrorCode.SHAPE_MISMATCH, phrase):
        unpack_encoding(blob)


def test_hidden_dim_must_match_the_tensors(parts):
    with wire_error(ErrorCode.SHAPE_MISMATCH, "expected [2, 16, 64]"):
        unpack_encoding(craft(parts, metadata={"hidden_dim": "64"}))


def test_frame_count_must_match_the_callers(pair):
    with wire_error(ErrorCode.SHAPE_MISMATCH, "holds 1 frame(s), expected 2"):
        unpack_encoding(pack_encoding(pair[0]), frames=2)


def test_frame_count_must_match_the_tensors(parts):
    with wire_error(ErrorCode.SHAPE_MISMATCH, "expected [3, 16, 32]"):
        unpack_encoding(craft(parts, metadata={"frames": "3"}))


@pytest.mark.parametrize(("name", "index", "value"), [("cond_dit", (0, 3, 5), float("nan")),
                                                      ("cond_dec", (1, 0, 0), float("-inf")),
                                                      ("std", (1,), float("inf"))])
def test_non_finite_values(parts, name, index, value):
    tensor = parts[0][name].clone()
    tensor[index] = value
    with wire_error(ErrorCode.INVALID_BLOB, f"tensor {name} holds non-finite values"):
        unpack_encoding(craft(parts, tensors={name: tensor}))


def test_grid_that_disagrees_with_the_frame_size(parts):
    with wire_error(ErrorCode.SHAPE_MISMATCH, "grid [4, 4] does not fit a 40x90 frame (expected [4, 6])"):
        unpack_encoding(craft(parts, metadata={"width": "90"}))
    with wire_error(ErrorCode.SHAPE_MISMATCH, "grid [2, 8] does not fit"):
        unpack_encoding(craft(parts, metadata={"grid": "2,8"}))


def test_padding_that_disagrees_with_the_frame_size(parts):
    with wire_error(ErrorCode.SHAPE_MISMATCH, "pad [0, 24, 4, 4] does not fit"):
        unpack_encoding(craft(parts, metadata={"pad": "0,24,4,4"}))
    # 50x56 pads to the same 64x64 grid, but with other padding
    with wire_error(ErrorCode.SHAPE_MISMATCH, "pad [12, 12, 4, 4] does not fit a 50x56 frame"):
        unpack_encoding(craft(parts, metadata={"height": "50"}))


@pytest.mark.parametrize(("key", "value", "phrase"), [
    ("height", "40.0", "height='40.0' is not 1 comma-separated integer"),
    ("width", "-56", "width='-56'"),
    ("height", " 40", "height=' 40'"),
    ("frames", "", "frames=''"),
    ("hidden_dim", "1e3", "hidden_dim='1e3'"),
    ("patch", "0", "patch='0' must be at least 1"),
    ("multiple", "9" * 40, "multiple="),
    ("grid", "4,4,4", "grid='4,4,4' is not 2 comma-separated"),
    ("pad", "12,12,4", "pad='12,12,4' is not 4 comma-separated"),
    ("height", None, "metadata lacks 'height'"),
    ("wire_dtype", None, "metadata lacks 'wire_dtype'"),
])
def test_malformed_metadata(parts, key, value, phrase):
    with wire_error(ErrorCode.INVALID_BLOB, phrase):
        unpack_encoding(craft(parts, metadata={key: value}))


@pytest.mark.parametrize(("value", "phrase"), [("nan", "not a finite"), ("inf", "not a finite"),
                                               ("1.5", "not a finite cosine similarity"), ("half", "not a number")])
def test_bad_difference(parts, value, phrase):
    with wire_error(ErrorCode.INVALID_BLOB, f"difference='{value}' is {phrase}"):
        unpack_encoding(craft(parts, metadata={"difference": value}))


def test_malformed_header_entries():
    header = json.dumps({"__metadata__": {"format": "edensplit.enc_out"},
                         "cond_dit": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}).encode()
    with wire_error(ErrorCode.INVALID_BLOB, "malformed header entry for tensor 'cond_dit'"):
        unpack_encoding(struct.pack("<Q", len(header)) + header)
    header = json.dumps({"__metadata__": {"format": 1}}).encode()
    with wire_error(ErrorCode.INVALID_BLOB, "malformed metadata"):
        unpack_encoding(struct.pack("<Q", len(header)) + header)
