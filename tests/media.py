"""Generated test media: camera pans, a talking head, hard cuts between two shots, still (repeated) frames, clips
with an audio track (a sine, silent until a known frame) and subtitles, written through PyAV like real files."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from edensplit.video.sample import _sample_frame
from edensplit.video.writing import VideoWriter


def world(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A wide textured landscape (smooth noise in colour, bands and blocks) for a camera to pan across."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 8, 2), max(width // 8, 2), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    base[..., 1] = 0.6 * base[..., 1] + 0.4 * (128 + 100 * np.sin(xx / 23.0))
    for _ in range(width // 40):  # sharp-edged blocks: buildings, trees
        x, y = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        w, h = int(rng.integers(6, 20)), int(rng.integers(6, 20))
        base[y: y + h, x: x + w] = rng.integers(0, 256, 3)
    return np.clip(base, 0, 255).astype(np.uint8)


def pan_frames(n: int, width: int, height: int, speed: float = 3.0, seed: int = 0) -> list[np.ndarray]:
    """n frames of a camera panning right across `world` at `speed` pixels a frame (drifting down a little)."""
    scene = world(width + int(abs(speed) * n) + 8, height + n // 2 + 8, seed)
    frames = []
    for k in range(n):
        x, y = speed * k, 0.3 * k  # sub-pixel positions: resampled, as a real camera would see it
        crop = Image.fromarray(scene).transform((width, height), Image.Transform.AFFINE, (1, 0, x, 0, 1, y),
                                                 resample=Image.Resampling.BILINEAR)
        frames.append(np.asarray(crop, np.uint8).copy())
    return frames


def talking_head_frames(n: int, width: int, height: int) -> list[np.ndarray]:
    """n frames of a head and shoulders against a wall: the head sways, the mouth opens and closes, eyes blink."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    wall = np.stack([150 + 20 * np.sin(xx / 9), 140 + 0 * xx, 120 + 10 * np.cos(yy / 7)], axis=-1)
    frames = []
    for k in range(n):
        img = wall.copy()
        cx, cy = width / 2 + 3 * np.sin(k / 4), height * 0.42 + np.sin(k / 3)
        rx, ry = width * 0.16, height * 0.26
        body = (((xx - width / 2) / (width * 0.35)) ** 2 + ((yy - height * 1.05) / (height * 0.4)) ** 2) < 1
        img[body] = (40, 60, 110)
        face = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        img[face] = (225, 180, 150)
        hair = (((xx - cx) / (rx * 1.05)) ** 2 + ((yy - cy + ry * 0.35) / (ry * 0.8)) ** 2 < 1) & (yy < cy - ry * 0.4)
        img[hair] = (60, 40, 30)
        blink = k % 9 == 0
        for ex in (cx - rx * 0.4, cx + rx * 0.4):
            eye = ((xx - ex) / (rx * 0.15)) ** 2 + ((yy - cy + ry * 0.15) / (ry * (0.02 if blink else 0.1))) ** 2 < 1
            img[eye] = (30, 30, 30)
        mouth_open = 0.04 + 0.08 * abs(np.sin(k * 0.9))
        mouth = ((xx - cx) / (rx * 0.35)) ** 2 + ((yy - cy - ry * 0.45) / (ry * mouth_open)) ** 2 < 1
        img[mouth] = (120, 30, 40)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def sample_frames(n: int, width: int, height: int, start: int = 0) -> list[np.ndarray]:
    """Frames start..start+n-1 of the demo's sample clip (edensplit.video.sample.make_sample_clip)."""
    return [_sample_frame(k, width, height) for k in range(start, start + n)]


def cut_frames(before: int, after: int, width: int, height: int) -> list[np.ndarray]:
    """A hard cut: `before` frames of the sample clip's shot, then `after` frames of a pan over a landscape."""
    return sample_frames(before, width, height) + pan_frames(after, width, height, speed=2.0, seed=7)


def with_stills(frames: Sequence[np.ndarray], repeat_at: Sequence[int]) -> list[np.ndarray]:
    """`frames` with frame k written twice for each k in `repeat_at` (a still: two bit-equal frames)."""
    out: list[np.ndarray] = []
    for k, frame in enumerate(frames):
        out.append(frame)
        if k in repeat_at:
            out.append(frame.copy())
    return out


def write_clip(path: Path, frames: Sequence[np.ndarray], rate: Fraction = Fraction(30000, 1001),
               codec: str | None = None) -> Path:
    """Write frames as a video (ffv1, lossless, for .mkv; libx264 otherwise)."""
    codec = codec or ("ffv1" if path.suffix == ".mkv" else "libx264")
    with VideoWriter(path, rate, frames[0].shape[1], frames[0].shape[0], codec=codec) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def sine_block(start: int, count: int, sample_rate: int, onset: int) -> np.ndarray:
    """Samples start..start+count of a 440 Hz sine that is silent before sample `onset` (float32 [1, count])."""
    t = np.arange(start, start + count)
    return np.where(t >= onset, 0.4 * np.sin(2 * np.pi * 440 * t / sample_rate), 0.0).astype(np.float32)[None, :]


def write_av_clip(path: Path, frames: Sequence[np.ndarray], rate: Fraction, audio_codec: str,
                  sample_rate: int = 48000, onset_frame: int = 5, subtitles: Sequence[tuple[int, int, str]] = ()
                  ) -> Path:
    """A clip with a video stream (ffv1 in .mkv, libx264 in .mp4), a mono sine audio track silent until video
    frame `onset_frame`, lasting as long as the video, and text subtitles (start ms, duration ms, text), muxed
    interleaved in time as a real file is."""
    container = av.open(str(path), "w")
    height, width = frames[0].shape[:2]
    video = container.add_stream("ffv1" if path.suffix == ".mkv" else "libx264", rate=rate)
    video.width, video.height = width, height
    video.pix_fmt = "bgr0" if path.suffix == ".mkv" else "yuv420p"
    video.time_base = 1 / rate
    audio = container.add_stream(audio_codec, rate=sample_rate)
    audio.layout = "mono"
    subs = None
    if subtitles:
        subs = container.add_mux_stream("subrip" if path.suffix == ".mkv" else "mov_text")
        subs.time_base = Fraction(1, 1000)
    total = int(sample_rate * len(frames) / rate)
    onset = int(sample_rate * onset_frame / rate)
    written, block = 0, 960
    pending_subs = sorted(subtitles)
    for k, frame in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts = k
        for packet in video.encode(vf):
            container.mux(packet)
        until = min(int(sample_rate * (k + 1) / rate), total)
        while written < until:
            count = min(block, total - written)
            af = av.AudioFrame.from_ndarray(sine_block(written, count, sample_rate, onset), format="flt",
                                            layout="mono")
            af.sample_rate, af.pts = sample_rate, written
            for packet in audio.encode(af):
                container.mux(packet)
            written += count
        while subs is not None and pending_subs and pending_subs[0][0] <= 1000 * (k + 1) / rate:
            start_ms, duration_ms, text = pending_subs.pop(0)
            data = text.encode()
            if path.suffix != ".mkv":
                data = len(data).to_bytes(2, "big") + data
            packet = av.Packet(data)
            packet.stream, packet.time_base = subs, Fraction(1, 1000)
            packet.pts = packet.dts = start_ms
            packet.duration = duration_ms
            container.mux(packet)
    for packet in audio.encode(None):
        container.mux(packet)
    for packet in video.encode(None):
        container.mux(packet)
    container.close()
    return path


def audio_samples(path: Path) -> tuple[np.ndarray, int, Fraction]:
    """The first audio stream's decoded samples (first channel, float), its sample rate, and its start time
    relative to the first video frame (seconds)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        video = container.streams.video[0]
        video_start = Fraction(video.start_time or 0) * video.time_base
        chunks, first = [], None
        for frame in container.decode(stream):
            if first is None and frame.pts is not None:
                first = Fraction(frame.pts) * frame.time_base
            samples = frame.to_ndarray().astype(np.float32)
            channels = len(frame.layout.channels)
            chunks.append(samples[0] if frame.format.is_planar else samples[0, ::channels])
        return np.concatenate(chunks), stream.sample_rate, (first or Fraction(0)) - video_start
