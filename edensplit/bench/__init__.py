"""`edensplit bench`: what the split costs and what it moves, on this machine, and how good its frames are. Five
modes:

- `compare` (the default): transports x wire dtypes x flows against `--local`. Starts a cloud and an edge
  server (real uvicorn processes on loopback; the full-size EDEN with random weights unless MODEL_PATH is
  set), interpolates the same generated clip through every combination, and reports, per combination:
  output frames/s, p50/p95 latency per generated frame, and the bytes per generated frame on each hop,
  read from the servers' own /metrics (the bytes on the wire). The local baseline runs both stages in this
  process on the same machine.
- `perf`: "stage" measurements, the model layer called in this process (`encode_frames`, `frame_context`,
  `interpolate`) per size, compute precision and batch, with `torch.cuda.synchronize()` around each timed
  call on CUDA and warm-up calls not counted: encoder ms per frame, edge ms per pair at batch 1 and at the
  best batch, edge ms per generated frame in a session (each frame's keys/values computed once), peak GPU
  memory; and "system" measurements through real servers per size and precision: pairs/s end to end
  (frames in memory to frames in memory) and bytes per generated frame per hop, the user's design
  (pair at a time, float32, JSON/base64) as the baseline row. The reference figures sit beside them.
- `bytes`: the user's design vs frame-once sessions (float16, int8 by default) on one clip through real
  servers: bytes of encodings per generated frame (cloud responses + edge requests, by route, from the
  servers' /metrics), the ratio to the user's design, and each design's frames against the user's
  (float32) frames: mean and max absolute difference in grey levels and PSNR.

- `overhead`: what serving adds per generated frame with the stand-in model (EDENSPLIT_STAND_IN_MODEL=1) through
  real servers, each path (HTTP, WebSocket; binary, JSON, shared memory) x wire dtype x flow x size beside the
  floor of moving the same bytes through a bare uvicorn app, with the step split and the bytes per hop
  (docs/performance.md, Serving overhead).
- `quality`: middle frames against the true ones (PSNR, SSIM, and on synthetic triplets the moving objects'
  centroid error), the model MODEL_PATH names (else the tiny EDEN) beside the blend, the nearest frame and the
  full-size random model, on held-out synthetic triplets and real clips by drop-frame (docs/quality.md).

Every mode prints Markdown, and writes it (`--output`) and a JSON document (`--json`) when asked.

The modules, one job each: `entry` (`run_from_args`, the flags to one mode's run), `compare`, `perf` (with `stages`,
the model layer timed in this process), `bytes` (with issue #9's acceptance), `overhead` (with `overhead_report`,
`steps`, `floor` and `floor_app`) and `quality`, one per mode; shared by the modes: `systems` (starting the servers,
a design through them, the bytes per hop from /metrics, the row a run makes), `timing` (latencies, calls timed in
turns, clocks, CUDA sync), `inputs` (the clip, the model's weights) and `output` (Markdown tables and cells, the
environment line, JSON).
"""
