"""Video and still-frame I/O for the client, through PyAV and Pillow: uint8 RGB `[H, W, 3]` frames in and out.

One module a job; import from the one that defines what you need:

- `frames`: the frame contract they share (`check_frame`, `PathLike`).
- `reading`: `probe_video` (size, exact rate, frame count) and `read_frames` (decoded one at a time).
- `writing`: `VideoWriter` (frames out at an exact rational rate; codecs, pixel formats, colour tags).
- `streams`: `StreamCopier` (the input's audio and subtitles carried into the output, in sync).
- `images`: PNG frames and numbered image folders.
- `sample`: the synthetic sample clip for the demo, benchmarks and tests.
- `sheet`: contact sheets for looking at results.
"""
