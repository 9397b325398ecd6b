"""Input files are untrusted. A video is opened by FFmpeg with the file protocol and the demuxers of real video
containers only: an FFmpeg concat list or an HLS playlist given as --video_path is refused in one line (exit 2)
before anything it names is opened or any frame read. Images are decoded only as PNG, JPEG, BMP, TIFF or WebP:
an EPS, PDF, ICO or GIF file is refused naming what it is, and a decompression bomb gives one line, not a
traceback or Pillow's warning. Real videos (MP4, Matroska, MOV, MPEG-TS) still open."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from edensplit.errors import InputError
from edensplit.video.images import read_png, write_png
from edensplit.video.reading import probe_video, read_frames
from edensplit.video.sample import make_sample_clip
from tests.conftest import make_frames, run_cli_here

LOOPBACK = "http://127.0.0.1:9"  # the discard port: nothing listens there, and nothing is asked of it


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A folder with a real clip and an MPEG-TS segment, next to which the lists under test are written."""
    folder = tmp_path_factory.mktemp("inputs")
    make_sample_clip(folder / "clip.mkv", n_frames=4, width=32, height=24)
    write_ts(folder / "segment.ts", 4)
    return folder


def write_ts(path: Path, n: int) -> Path:
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=24)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for frame in make_frames(n, 24, 32):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def interpolate(model_env: dict[str, str], *args: str):
    return run_cli_here(["interpolate", *args, "--local", "--no_progress"], model_env)


def refused_line(result) -> str:
    """Exit 2 and exactly one line on stderr, the CLI's error (no traceback, no warning, nothing run)."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("edensplit interpolate: error: "), lines[0]
    return lines[0]


LISTS = {
    "concat, absolute": ("list.txt", "ffconcat version 1.0\nfile /etc/hostname\n", "an FFmpeg concat list"),
    "concat, a clip next to it": ("list.ffconcat", "ffconcat version 1.0\nfile clip.mkv\nfile clip.mkv\n",
                                  "an FFmpeg concat list"),
    "hls, a local segment": ("local.m3u8", "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n"
                             "segment.ts\n#EXT-X-ENDLIST\n", "an HLS/M3U playlist"),
    "hls, a loopback url": ("remote.m3u8", f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{LOOPBACK}/segment.ts\n"
                            "#EXT-X-ENDLIST\n", "an HLS/M3U playlist"),
}


@pytest.mark.parametrize("case", list(LISTS))
def test_a_playlist_or_concat_list_is_refused_before_anything_it_names_is_opened(media, tmp_path, model_env, case):
    name, text, what = LISTS[case]
    listed = media / name
    listed.write_text(text)
    out = tmp_path / "out"
    line = refused_line(interpolate(model_env, "--video_path", str(listed), "--output_dir", str(out)))
    assert line.startswith(f"edensplit interpolate: error: not a readable video: {listed} ({what}: "), line
    assert not out.exists()  # refused while the options were checked: no model, no state, no frame read
    with pytest.raises(InputError, match=what):
        next(read_frames(listed))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov", ".ts"])
def test_real_videos_still_open(media, tmp_path, suffix):
    path = write_ts(tmp_path / "clip.ts", 5) if suffix == ".ts" else \
        make_sample_clip(tmp_path / f"clip{suffix}", n_frames=5, width=32, height=24, rate=Fraction(24))
    info = probe_video(path)
    assert (info.width, info.height, info.rate) == (32, 24, 24)
    assert sum(1 for _ in read_frames(path)) == 5


def eps(path: Path) -> None:
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 24\nnewpath 0 0 moveto 32 24 lineto stroke\n"
                    "showpage\n%%EOF\n")


def pillow_saved(fmt: str) -> Callable[[Path], None]:
    def save(path: Path) -> None:
        Image.fromarray(make_frames(1, 24, 32)[0]).save(path, format=fmt)
    return save


OTHER_FORMATS = {"EPS": eps, "ICO": pillow_saved("ICO"), "PDF": pillow_saved("PDF"), "GIF": pillow_saved("GIF")}


@pytest.mark.parametrize("fmt", list(OTHER_FORMATS))
def test_an_image_in_another_format_is_refused_naming_it(tmp_path, model_env, fmt):
    image = tmp_path / f"frame.{fmt.lower()}"
    OTHER_FORMATS[fmt](image)
    good = write_png(tmp_path / "good.png", make_frames(1, 24, 32)[0])
    out = tmp_path / "out"
    line = refused_line(interpolate(model_env, "--frame_0_path", str(image), "--frame_1_path", str(good),
                                    "--output_dir", str(out)))
    assert line == (f"edensplit interpolate: error: not an image edensplit reads: {image} is {fmt} (it reads PNG, "
                    "JPEG, BMP, TIFF or WebP images)")
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["EPS", "ICO"])
def test_an_image_folder_holding_another_format_is_refused_naming_it(tmp_path, model_env, fmt):
    folder = tmp_path / "in"
    folder.mkdir()
    for k, frame in enumerate(make_frames(4, 24, 32)):
        write_png(folder / f"{k:04d}.png", frame)
    disguised = folder / "0002.png"  # the suffix says PNG; the bytes do not
    OTHER_FORMATS[fmt](disguised)
    out = tmp_path / "out"
    line = refused_line(interpolate(model_env, "--input_dir", str(folder), "--output_dir", str(out)))
    assert line == (f"edensplit interpolate: error: not an image edensplit reads: {disguised} is {fmt} (it reads "
                    "PNG, JPEG, BMP, TIFF or WebP images)")
    assert not out.exists()  # refused before any image was decoded or anything written


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width` x `height` (its data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_gives_one_line(tmp_path, model_env):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(100_000, 100_000))
    good = write_png(tmp_path / "good.png", make_frames(1, 24, 32)[0])
    line = refused_line(interpolate(model_env, "--frame_0_path", str(bomb), "--frame_1_path", str(good),
                                    "--output_dir", str(tmp_path / "out")))
    assert line.startswith(f"edensplit interpolate: error: image too large: {bomb} is 100000x100000 pixels, over "
                           "the limit of "), line


@pytest.mark.parametrize("side", [40, 64])  # between Pillow's limit and twice it (a warning), and past twice (an error)
def test_pillows_pixel_limit_is_an_input_error_at_any_size(tmp_path, monkeypatch, recwarn, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = write_png(tmp_path / "big.png", np.zeros((side, side, 3), np.uint8))
    with pytest.raises(InputError, match=f"image too large: {path} is {side}x{side} pixels, over the limit of 1000"):
        read_png(path)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
