"""`edensplit demo`: the whole system on one machine, from nothing.

Starts a cloud and an edge server (real uvicorn processes on loopback ports), interpolates a sample
clip made on the fly through them, writes the video and a sheet of input and generated frames,
stops the servers and says where the files are. Without MODEL_PATH it runs the tiny EDEN installed with the
package (edensplit.model.loading.for_trying_out), and says so; with EDEN_RANDOM_WEIGHTS=1, or in a copy without
the tiny EDEN, a small random-weight model, and says so: the frames then show the pipeline working, not EDEN's
quality.
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

from edensplit.client.flows import open_backend
from edensplit.client.jobs import interpolate_video
from edensplit.model.hub import RELEASED
from edensplit.model.loading import for_trying_out
from edensplit.model.sources import TINY, tiny_installed
from edensplit.servers.launch import ServerProcess
from edensplit.settings import ModelSettings
from edensplit.video.reading import read_frames
from edensplit.video.sheet import save_contact_sheet

DEMO_CONFIG = """\
# A small EDEN for the demo when it runs random weights.
model_args:
  hidden_dim: 128
  num_heads: 4
  dit_depth: 2
  decoder_depth: 1
"""
RANDOM = ("running a small EDEN with RANDOM weights. The frames show the split pipeline working end to end, not "
          "EDEN's quality.")
SHEET_ROWS = 4


def run_demo(output_dir: str | Path = "out/demo", n_frames: int = 12, width: int = 256, height: int = 144) -> dict:
    """Run the demo; returns the paths it wrote and its wall time."""
    from edensplit.video.sample import make_sample_clip

    started = time.perf_counter()
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env, weights = demo_model(out)
    clip = make_sample_clip(out / "sample.mp4", n_frames=n_frames, width=width, height=height, rate=Fraction(24))
    print(f"sample clip: {clip} ({n_frames} frames, {width}x{height}, 24 fps)")
    with ServerProcess("edensplit.cloud:app", env=env, log_path=out / "cloud.log") as cloud, \
            ServerProcess("edensplit.edge:app", env=env, log_path=out / "edge.log") as edge:
        print(f"cloud server at {cloud.url}, edge server at {edge.url}")
        client = open_backend(cloud_url=cloud.url, edge_url=edge.url)  # the defaults: HTTP, frame-once
        try:
            result = interpolate_video(client, clip, out, save_frames=True, progress=True)
        finally:
            client.close()
    frames = list(read_frames(clip))[:SHEET_ROWS + 1]
    generated = sorted(result.generated_dir.glob("*.png"))[:SHEET_ROWS] if result.generated_dir else []
    from edensplit.video.images import read_png

    rows = [[frames[k], read_png(path), frames[k + 1]] for k, path in enumerate(generated)]
    sheet = save_contact_sheet(out / "sheet.png", rows, labels=["frame k", "generated k+1/2", "frame k+1"])
    wall = time.perf_counter() - started
    print(f"wrote {result.output} ({result.frames_in} frames in, {result.frames_out} out, 48 fps)")
    print(f"wrote {sheet} (input frames and generated frames side by side)")
    print(f"server logs: {out / 'cloud.log'}, {out / 'edge.log'}; demo wall time {wall:.1f} s")
    if weights != "MODEL_PATH":
        print(f"Reminder: {weights}. Set MODEL_PATH={RELEASED} (or a checkpoint file) to see EDEN's real output.")
    return {"video": result.output, "sheet": sheet, "seconds": wall, "weights": weights,
            "random_weights": weights == "random weights"}


def demo_model(out: Path) -> tuple[dict[str, str], str]:
    """The servers' extra environment and what they run ("MODEL_PATH", "the tiny EDEN" or "random weights"), said
    in a line: MODEL_PATH if set, else EDEN_RANDOM_WEIGHTS=1, else the tiny EDEN where this copy has it, else (as
    before it was installed) random weights. Random weights take EDEN_CONFIG, else a small config."""
    settings = ModelSettings()
    if settings.model_path is not None:
        return {}, "MODEL_PATH"
    if for_trying_out(settings, say=print).model_path == TINY and tiny_installed():
        return {"MODEL_PATH": TINY}, "the tiny EDEN"
    env = {"EDEN_RANDOM_WEIGHTS": "1"}
    if settings.eden_config is None:
        config = out / "demo_eden.yaml"
        config.write_text(DEMO_CONFIG)
        env["EDEN_CONFIG"] = str(config)
    why = "EDEN_RANDOM_WEIGHTS=1" if settings.eden_random_weights else "no MODEL_PATH, and no tiny EDEN installed"
    print(f"{why}: {RANDOM}")
    return env, "random weights"
