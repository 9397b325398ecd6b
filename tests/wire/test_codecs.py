"""The wire dtypes have one source, the codec registry: docs/protocol.md's table matches it, no other module of
edensplit lists them, and a codec registered in a test is offered everywhere (CLI, options, OpenAPI, the blob,
the cloud's /encode)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from edensplit.cli import build_parser
from edensplit.errors import ErrorCode, InputError
from edensplit.model import precision
from edensplit.model.checkpoint import load_model
from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.settings import ServerSettings
from edensplit.wire import codecs
from edensplit.wire.blob import BLOB_MEDIA_TYPE, pack_encoding, read_blob_header, unpack_encoding
from edensplit.wire.codecs import WireCodec
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames
from edensplit.wire.options import Options
from tests.conftest import ROOT, TINY_CONFIG, make_frames
from tests.wire.helpers import wire_error

PACKAGE = ROOT / "edensplit"
PROTOCOL = ROOT / "docs" / "protocol.md"
# bench.py is being split elsewhere; it still names wire and compute dtypes in its designs and thresholds.
NOT_YET: set[Path] = set()
DUMMY = "dummy64"


@pytest.fixture
def dummy_codec() -> Iterator[WireCodec]:
    """A toy wire dtype (float64 tokens: exact for float32 encodings), registered for one test only."""
    codec = codecs.register(WireCodec(DUMMY, torch.float64, exact=True, bound="exact: float64 holds every float32",
                                      pack=codecs.cast(torch.float64), unpack=codecs.as_stored))
    try:
        yield codec
    finally:
        codecs.unregister(DUMMY)
    assert DUMMY not in codecs.names()


def encoding() -> FrameEncoding:
    torch.manual_seed(0)
    geo = Geometry(40, 56)
    tokens = torch.randn(2, geo.tokens, 32)
    return FrameEncoding(tokens, -tokens, torch.rand(2), torch.rand(2) + 0.1, geo)


# --- the registry ----------------------------------------------------------------------------------

def test_the_registry_holds_the_four_wire_dtypes_and_names_them_when_asked_for_another():
    assert codecs.names() == ("float32", "float16", "bfloat16", "int8")
    assert [codecs.get(n).exact for n in codecs.names()] == [True, False, False, False]
    assert codecs.get(codecs.DEFAULT).exact
    with pytest.raises(InputError, match="unknown wire dtype 'int4'; use one of float32, float16, bfloat16, int8"):
        codecs.get("int4")
    with pytest.raises(ValueError, match="already registered"):
        codecs.register(codecs.get("int8"))


def test_each_codec_keeps_the_bound_it_states():
    enc = encoding()
    x = enc.cond_dit
    for name in codecs.names():
        got = unpack_encoding(pack_encoding(enc, wire_dtype=name)).encoding.cond_dit.float()
        err = (got - x).abs()
        if name == "float32":
            assert torch.equal(got, x)
        elif name == "float16":
            assert bool((err <= 2**-11 * x.abs() + 2**-25).all())
        elif name == "bfloat16":
            assert bool((err <= 2**-8 * x.abs()).all())
        else:
            step = x.abs().amax(dim=-1, keepdim=True) / 127
            assert bool((err <= step / 2 + 1e-7 * x.abs()).all())


# --- one source ------------------------------------------------------------------------------------

def wire_dtype_table() -> list[list[str]]:
    """The rows of docs/protocol.md's *Wire dtypes* table, cells unescaped."""
    lines = PROTOCOL.read_text().split("### Wire dtypes", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| wire dtype |"))
    table = []
    for line in lines[start + 2:]:  # past the header and its |---| line, up to the table's end
        if not line.startswith("|"):
            break
        table.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return table


def test_the_protocol_docs_table_matches_the_registry():
    table = wire_dtype_table()
    assert [row[0].strip("`") for row in table] == list(codecs.names())
    for name, stored, exact, bound in table:
        codec = codecs.get(name.strip("`"))
        assert stored.split(",")[0] == str(codec.dtype).removeprefix("torch."), name
        assert exact == ("yes" if codec.exact else "no"), name
        assert bound == codec.bound, name


def string_constants(path: Path) -> list[tuple[int, str]]:
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_int8_is_a_string_literal_only_in_the_codec_registry():
    holders = {path for path in PACKAGE.rglob("*.py") if any(v == "int8" for _, v in string_constants(path))}
    assert holders - NOT_YET == {PACKAGE / "wire" / "codecs.py"}


def test_no_module_lists_the_dtypes_but_their_registries():
    """No tuple, list, set, dict or Literal of two or more wire or compute dtype names outside the two registries:
    CLI choices, option types and messages come from them."""
    vocabulary = set(codecs.names()) | set(precision.names())
    registries = {PACKAGE / "wire" / "codecs.py", PACKAGE / "model" / "precision.py"}
    found = []
    for path in set(PACKAGE.rglob("*.py")) - registries - NOT_YET:
        for node in ast.walk(ast.parse(path.read_text())):
            items = (node.keys if isinstance(node, ast.Dict) else node.elts
                     if isinstance(node, ast.Tuple | ast.List | ast.Set) else [])
            named = {i.value for i in items if isinstance(i, ast.Constant) and i.value in vocabulary}
            if len(named) >= 2:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {sorted(named)}")
    assert found == []


# --- a new codec is offered everywhere -------------------------------------------------------------

def test_a_registered_codec_is_offered_by_the_cli_and_the_options(dummy_codec):
    args = build_parser().parse_args(["interpolate", "--frame0", "a.png", "--frame1", "b.png", "--wire_dtype", DUMMY])
    assert args.wire_dtype == DUMMY
    assert Options.from_flat({"wire_dtype": DUMMY}).wire_dtype == DUMMY
    schema = Options.model_json_schema()["properties"]["wire_dtype"]
    assert DUMMY in schema["anyOf"][0]["enum"]
    with pytest.raises(Exception) as err:
        Options.from_flat({"wire_dtype": "int4"})
    assert err.value.code == ErrorCode.INVALID_PARAMETER
    assert err.value.message == f"wire_dtype 'int4' is not one of float32, float16, bfloat16, int8, {DUMMY}"


def test_a_registered_codec_packs_and_unpacks(dummy_codec):
    enc = encoding()
    blob = pack_encoding(enc, 0.5, wire_dtype=DUMMY)
    assert read_blob_header(blob)["wire_dtype"] == DUMMY
    out = unpack_encoding(blob, frames=2)
    assert out.wire_dtype == DUMMY and out.encoding.cond_dit.dtype == torch.float64
    assert torch.equal(out.encoding.cond_dit.float(), enc.cond_dit)
    assert torch.equal(out.encoding.cond_dec.float(), enc.cond_dec)


def test_a_registered_codec_is_offered_by_a_new_cloud(dummy_codec):
    model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    frames = make_frames(2, 40, 70)
    with TestClient(create_cloud_app(ServerSettings(eden_random_weights=True), model)) as cloud:
        spec = cloud.get("/openapi.json").json()
        for path in ("/api/v1/encode", "/api/v1/encode_frame"):
            operation = spec["paths"][path]["post"]
            (parameter,) = [p for p in operation["parameters"] if p["name"] == "wire_dtype"]
            assert parameter["schema"]["enum"] == list(codecs.names()) and DUMMY in parameter["schema"]["enum"]
        assert DUMMY in spec["paths"]["/api/v1/encode"]["post"]["description"]
        r = cloud.post("/api/v1/encode", params={"wire_dtype": DUMMY},
                       content=pack_frames({"frame0": frames[0], "frame1": frames[1]}),
                       headers={"Content-Type": FRAMES_MEDIA_TYPE})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == BLOB_MEDIA_TYPE
        assert read_blob_header(r.content)["wire_dtype"] == DUMMY
        exact = unpack_encoding(r.content, frames=2).encoding
        plain = unpack_encoding(cloud.post("/api/v1/encode", content=pack_frames({"frame0": frames[0],
                                                                                 "frame1": frames[1]}),
                                           headers={"Content-Type": FRAMES_MEDIA_TYPE}).content).encoding
        assert np.array_equal(exact.cond_dit.float().numpy(), plain.cond_dit.numpy())


def test_an_unregistered_codec_is_refused_again(dummy_codec):
    blob = pack_encoding(encoding(), wire_dtype=DUMMY)
    codecs.unregister(DUMMY)
    with wire_error(ErrorCode.INVALID_BLOB, f"unknown wire_dtype '{DUMMY}'"):
        unpack_encoding(blob)
    with pytest.raises(InputError, match=f"unknown wire dtype '{DUMMY}'"):
        pack_encoding(encoding(), wire_dtype=DUMMY)
