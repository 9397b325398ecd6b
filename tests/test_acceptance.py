"""Issue #9's acceptance for the bytes of frame-once sessions, measured: at 176x144 (WxH), with the full-size
model, on a 40-frame clip in flow A, frame-once int8 moves at least 10x fewer bytes of encodings (cloud ->
client -> edge) than the user's design (pair at a time, float32, JSON/base64), frame-once float16 at least 5x.

The bytes are measured here, not read back: the full-size encoder (random weights: bytes follow the shapes and
dtypes, not the values) runs in the real cloud app, which the client's `Cloud` calls as in a job; the cloud ->
client bytes are the cloud's answers as its own /metrics counted them, the client -> edge bytes the bodies of the
requests the client builds for the edge (edensplit.client.requests: the blob as is, or base64 in JSON), as httpx
serialises them. Running the edge (the DiT, seconds a frame on a CPU) would add nothing to the bytes, so it does
not run, and the issue's third criterion (int8's frames within 3 grey levels of float32's: the full-size DiT,
about 4 s a frame here) is measured by that benchmark only. The committed run through real servers
(`python benchmarks/acceptance.py`, benchmarks/acceptance-176x144.json) must count the same bytes: a change to
the wire formats makes it stale."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from edensplit.bench.bytes import ACCEPTANCE_FRAMES, ACCEPTANCE_RATIOS, ACCEPTANCE_SIZE, BYTES_DESIGNS
from edensplit.bench.systems import USER_DESIGN, Design
from edensplit.client import requests
from edensplit.client.http import HttpTransport
from edensplit.client.services import Cloud
from edensplit.model.checkpoint import load_model
from edensplit.model.config import EdenConfig
from edensplit.model.seeds import noise_seed
from edensplit.model.stages import frame_difference
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.settings import ServerSettings
from edensplit.wire import codecs
from edensplit.wire.options import Options
from tests.conftest import make_frames

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "benchmarks" / "acceptance-176x144.json"


@dataclass(frozen=True)
class Measured:
    """One design's bytes of encodings over the clip: both hops, and per generated frame."""

    design: Design
    cloud_out: int  # the cloud's answers (cloud -> client), as the cloud counted them
    edge_in: int  # the client's requests to the edge (client -> edge)
    generated: int

    @property
    def encodings(self) -> float:
        return (self.cloud_out + self.edge_in) / self.generated


def answered_bytes(app, route: str) -> float:
    """The cloud's edensplit_response_bytes_total on `route`."""
    return app.state.metrics.registry.get_sample_value("edensplit_response_bytes_total", {"route": route}) or 0.0


def body_bytes(transport: HttpTransport, call: requests.Call) -> int:
    """The body of `call` as the client's HTTP transport sends it (its request built, not sent)."""
    return len(httpx.Request("POST", transport.url + call.path, **transport.prepare(call, "request-id")).content)


def run(cloud: Cloud, app, edge: HttpTransport, design: Design, frames) -> Measured:
    """The clip through `design` as the flow-A clients do it (edensplit.client.flows): pair at a time, each pair
    encoded and its blob sent to the edge; or frame-once, each frame encoded once and sent to the edge once (the
    first stored, each later one with the pair's difference and seed)."""
    pairs = design.flow == "a-pairs"
    route = "/api/v1/encode" if pairs else "/api/v1/encode_frame"
    before, edge_in = answered_bytes(app, route), 0
    if pairs:
        for k in range(len(frames) - 1):
            blob = cloud.encode(frames[k], frames[k + 1])
            call = requests.interpolate(blob, Options.from_flat({"seed": noise_seed(0, k)}), payload=design.payload)
            edge_in += body_bytes(edge, call)
    else:
        session = uuid.uuid4().hex
        for k, frame in enumerate(frames):
            options = {"interpolate": False} if k == 0 else {
                "seed": noise_seed(0, k - 1), "difference": float(frame_difference(frames[k - 1], frame)[0])}
            call = requests.session_frame(session, k, cloud.encode_frame(frame), Options.from_flat(options),
                                          payload=design.payload)
            edge_in += body_bytes(edge, call)
    return Measured(design, round(answered_bytes(app, route) - before), edge_in, len(frames) - 1)


@pytest.fixture(scope="module")
def measured() -> dict[str, Measured]:
    height, width = ACCEPTANCE_SIZE
    frames = list(make_frames(ACCEPTANCE_FRAMES, height, width))
    model = load_model(None, EdenConfig(), stages={"encode"}, allow_random=True)  # the released config: full size
    with TestClient(create_cloud_app(ServerSettings(warmup=False), model)) as app:
        cloud_http = HttpTransport("http://cloud", name="cloud server", client=app)
        edge_http = HttpTransport("http://edge", name="edge server")  # builds the edge's requests; sends nothing
        try:
            return {d.wire_dtype if d != USER_DESIGN else "user": run(
                Cloud(cloud_http, payload=d.payload, wire_dtype=d.wire_dtype), app.app, edge_http, d, frames)
                for d in BYTES_DESIGNS}
        finally:
            edge_http.close()


def test_the_designs_are_the_issues(measured):
    assert measured["user"].design == USER_DESIGN == Design("http", "json", "a-pairs", codecs.FLOAT32.name)
    for dtype in (codecs.FLOAT16.name, codecs.INT8.name):
        assert (measured[dtype].design.flow, measured[dtype].design.payload) == ("a-once", "binary")
    assert all(m.generated == ACCEPTANCE_FRAMES - 1 == 39 for m in measured.values())
    assert ACCEPTANCE_RATIOS == {"float16": 5.0, "int8": 10.0}


def test_frame_once_moves_5x_fewer_bytes_in_float16_and_10x_fewer_in_int8(measured):
    user = measured["user"].encodings
    ratios = {dtype: user / measured[dtype].encodings for dtype in ACCEPTANCE_RATIOS}
    print({k: f"{v:.3f}x" for k, v in ratios.items()}, {k: round(m.encodings) for k, m in measured.items()})
    assert ratios[codecs.FLOAT16.name] >= ACCEPTANCE_RATIOS[codecs.FLOAT16.name], ratios
    assert ratios[codecs.INT8.name] >= ACCEPTANCE_RATIOS[codecs.INT8.name], ratios


def test_the_bytes_are_the_encodings_shapes(measured):
    """What the ratios rest on, from the shapes: 176x144 pads to 192x160, a 12x10 grid of 120 tokens of 768
    values in two tensors per frame. A float32 pair is 4 bytes a value for two frames, base64 (4/3) in JSON both
    ways; a float16 frame 2 bytes a value; an int8 frame 1 byte a value and a float32 scale per token."""
    values = 2 * 120 * 768  # cond_dit and cond_dec of one frame
    user, f16, i8 = measured["user"], measured["float16"], measured["int8"]
    assert user.cloud_out / 39 == pytest.approx(2 * values * 4 * 4 / 3, rel=0.001)
    assert user.edge_in / 39 == pytest.approx(2 * values * 4 * 4 / 3, rel=0.001)
    assert f16.cloud_out == f16.edge_in and f16.cloud_out / 40 == pytest.approx(values * 2, rel=0.002)
    assert i8.cloud_out == i8.edge_in and i8.cloud_out / 40 == pytest.approx(values + 2 * 120 * 4, rel=0.004)


def test_the_committed_run_through_real_servers_counted_the_same_bytes(measured):
    """benchmarks/acceptance-176x144.json holds the servers' own counts from a run through real uvicorn servers:
    the same bytes as measured here, per hop and design, within 2 bytes a generated frame (a JSON answer's
    timings and difference take a few more or fewer digits). A format change that moves the bytes makes it stale: run
    `python benchmarks/acceptance.py` again."""
    document = json.loads(COMMITTED.read_text())
    assert document["kind"] == "edensplit.bench.bytes"
    assert tuple(document["size"]) == ACCEPTANCE_SIZE and document["frames"] == ACCEPTANCE_FRAMES
    assert "the released config (full size)" in document["environment"]["model"]
    rows = document["rows"]
    assert [(r["flow"], r["payload"], r["wire_dtype"]) for r in rows] == [
        (m.design.flow, m.design.payload, m.design.wire_dtype) for m in measured.values()]
    for row, m in zip(rows, measured.values(), strict=True):
        assert row["generated"] == m.generated
        assert row["hops"]["cloud_out"] == pytest.approx(m.cloud_out / m.generated, abs=2), row["design"]
        assert row["hops"]["edge_in"] == pytest.approx(m.edge_in / m.generated, abs=2), row["design"]
        assert row["encodings_ratio_vs_first"] == pytest.approx(measured["user"].encodings / m.encodings, rel=1e-5)
