"""The shipped tiny EDEN interpolates: on held-out synthetic triplets its moving objects lie nearer their true
middle places than the blend's and the nearest frame's, within the bound measured for it; and through --local and
the servers in every transport, payload and flow (a video of the first triplets' end frames: frame-once sessions,
each generated frame equal to --local's) within the bound measured for those.

The triplets are the first ones of a held-out stream that neither training nor `bench --mode quality` uses, not
chosen by how the model does on them. The tiny EDEN is weak (docs/quality.md): it beats the blend's centroid error
over 24 triplets and over the 4 of the video, by half a pixel and less, and these tests hold it to what was
measured."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from edensplit.model.checkpoint import load_model
from edensplit.model.sources import tiny_installed
from edensplit.servers.launch import ServerProcess
from edensplit.training import synthetic
from edensplit.training.evaluate import blend, eden_interpolator, evaluate, nearest
from edensplit.training.metrics import object_offsets
from edensplit.video.writing import VideoWriter
from tests.conftest import generated, run_cli

STREAM, SIZE, MANY, CASES = synthetic.HELD_OUT_SEED + 7, 64, 24, 4
# Measured with the shipped weights (one thread, these seeds): the tracked objects' mean centroid error over the
# first MANY triplets is 2.39 px for the tiny EDEN in this process, 2.91 for the blend and 3.75 for the nearest
# frame; over the video's CASES triplets through the CLI (--seed 3) 2.33 px (blend 2.52, nearest 2.66). The bounds
# leave a margin for other CPUs' float rounding, no more.
MANY_BOUND_PX, VIDEO_BOUND_PX = 2.7, 2.7
MODES = [(t, p, f) for t in ("http", "ws") for p in ("binary", "json") for f in ("a", "b")]



@pytest.fixture(autouse=True, scope="module")
def _tiny_shipped() -> None:
    """The tiny EDEN ships with the package: missing, these tests fail saying so rather than pass unseen."""
    if not tiny_installed():
        pytest.fail("the tiny EDEN is not installed (edensplit/model/tiny/eden_tiny.safetensors and .yaml are "
                    "package data: pip install -e .)", pytrace=False)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """The triplets, and a lossless video of their end frames: I0 of case 0, I1 of case 0, I0 of case 1, ..."""
    triplets = list(synthetic.triplets(STREAM, CASES, SIZE, SIZE))
    clip = tmp_path_factory.mktemp("cases") / "cases.mkv"
    with VideoWriter(clip, Fraction(24), SIZE, SIZE, codec="ffv1") as writer:
        for t in triplets:
            writer.write(t.frames[0])
            writer.write(t.frames[2])
    return triplets, clip


def mean_offset(preds: list[np.ndarray], triplets: list[synthetic.Triplet]) -> float:
    """The tracked objects' mean distance (px) from their true middle places, over all cases."""
    return float(np.mean([e for p, t in zip(preds, triplets, strict=True) for e in object_offsets(p, t)]))


def middles(out) -> list[np.ndarray]:
    """The generated frames of the cases' own pairs (every other pair of the video)."""
    return generated(out)[0::2]


@pytest.fixture(scope="module")
def local(cases, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_cli("--video_path", str(cases[1]), "--output_dir", str(out), "--local", "--seed", "3", "--save_frames",
            "--codec", "ffv1", env={"MODEL_PATH": "tiny"})
    return middles(out)


@pytest.fixture(scope="module")
def tiny_servers(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    env = {"MODEL_PATH": "tiny", "DEVICE": "cpu"}
    with ServerProcess("edensplit.cloud:app", env=env, log_path=logs / "cloud.log") as cloud, \
            ServerProcess("edensplit.edge:app", env={**env, "CLOUD_SERVER_URL": cloud.url},
                          log_path=logs / "edge.log") as edge:
        yield cloud, edge


def test_the_tiny_eden_puts_objects_nearer_their_middle_places_than_the_blend():
    model = load_model("tiny")
    scores = evaluate({"eden": eden_interpolator(model), "blend": blend, "nearest": nearest}, STREAM, MANY, SIZE, SIZE)
    eden, blended, near = (scores[m]["centroid_px"] for m in ("eden", "blend", "nearest"))
    print(f"mean centroid error over {MANY}: tiny EDEN {eden:.2f} px, blend {blended:.2f} px, nearest {near:.2f} px")
    assert eden <= MANY_BOUND_PX
    assert eden < blended < near


def test_local_puts_the_video_cases_objects_within_the_measured_bound(cases, local):
    ends = [(t.frames[0][None], t.frames[2][None]) for t in cases[0]]
    print(f"video cases: tiny EDEN {mean_offset(local, cases[0]):.2f} px, blend "
          f"{mean_offset([blend(a, b)[0] for a, b in ends], cases[0]):.2f} px, nearest "
          f"{mean_offset([nearest(a, b)[0] for a, b in ends], cases[0]):.2f} px")
    assert mean_offset(local, cases[0]) <= VIDEO_BOUND_PX


@pytest.mark.parametrize("transport,payload,flow", MODES, ids=["-".join(m) for m in MODES])
def test_every_split_mode_interpolates_as_local(cases, local, tiny_servers, tmp_path, transport, payload, flow):
    cloud, edge = tiny_servers
    run_cli("--video_path", str(cases[1]), "--output_dir", str(tmp_path), "--seed", "3", "--save_frames",
            "--codec", "ffv1", "--transport", transport, "--payload", payload, "--flow", flow,
            "--cloud_url", cloud.url, "--edge_url", edge.url, env={})
    preds = middles(tmp_path)
    assert mean_offset(preds, cases[0]) <= VIDEO_BOUND_PX
    assert all(np.array_equal(p, q) for p, q in zip(preds, local, strict=True))
