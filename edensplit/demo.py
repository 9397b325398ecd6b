"""`edensplit demo`: the whole system on one machine, from nothing.

Starts a cloud and an edge server (real uvicorn processes on loopback ports), interpolates a sample
clip made on the fly through them, writes the video and a sheet of input and generated frames,
stops the servers and says where the files are. Without MODEL_PATH it runs a small random-weight
model, and says so: the frames then show the pipeline working, not EDEN's quality.
"""

from __future__ import annotations

import os
import time
from fractions import Fraction
from pathlib import Path

from edensplit.client.flows import open_backend
from edensplit.client.jobs import interpolate_video
from edensplit.servers.launch import ServerProcess
from edensplit.video.reading import read_frames
from edensplit.video.sheet import save_contact_sheet

DEMO_CONFIG = """\
# A small EDEN for the demo when no checkpoint is given (random weights).
model_args:
  hidden_dim: 128
  num_heads: 4
  dit_depth: 2
  decoder_depth: 1
"""
SHEET_ROWS = 4


def run_demo(output_dir: str | Path = "out/demo", n_frames: int = 12, width: int = 256, height: int = 144) -> dict:
    """Run the demo; returns the paths it wrote and its wall time."""
    from edensplit.video.sample import make_sample_clip

    started = time.perf_counter()
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {}
    random_weights = not os.environ.get("MODEL_PATH")
    if random_weights:
        config = out / "demo_eden.yaml"
        config.write_text(DEMO_CONFIG)
        env = {"EDEN_RANDOM_WEIGHTS": "1", "EDEN_CONFIG": str(config)}
        print("No MODEL_PATH set: running a small EDEN with RANDOM weights. The frames show the split "
              "pipeline working end to end, not EDEN's quality.")
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
    if random_weights:
        print("Reminder: random weights. Set MODEL_PATH=/path/to/eden.pt to see EDEN's real output.")
    return {"video": result.output, "sheet": sheet, "seconds": wall, "random_weights": random_weights}
