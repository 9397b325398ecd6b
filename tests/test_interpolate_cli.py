"""What people who interpolate video expect, through the real CLI and real servers on loopback: --multi 4 / --fps at
exact NTSC rates with the t = 1/2 frames of the 2x job; a hard cut and a still pair repeated (nothing sent) while
audio and subtitles come through in sync; an image folder in and numbered PNGs (and a video) out; progress as plain
lines when stderr is not a terminal, --quiet silent; a 4x job interrupted and resumed."""

from __future__ import annotations

import re
import signal
from fractions import Fraction

import av
import numpy as np
import pytest

from edensplit.client.resume import saved_frames
from edensplit.video.images import list_images, read_png, write_png
from edensplit.video.reading import probe_video, read_frames
from tests.conftest import N_FRAMES, generated, run_cli
from tests.media import audio_samples, cut_frames, pan_frames, sample_frames, with_stills, write_av_clip, write_clip
from tests.system import finish, requests_total, resume, start_cli, wait_for_saved

NTSC = Fraction(30000, 1001)


def split(servers, *args: str, env: dict[str, str] | None = None):
    cloud, edge = servers
    return run_cli(*args, "--cloud_url", cloud.url, "--edge_url", edge.url, env=env or {})


def edge_requests(edge) -> int:
    return sum(n for (route, method, _), n in requests_total(edge).items()
               if method == "POST" and ("sessions" in route or "interpolate" in route))


@pytest.fixture(scope="module")
def local_4x(clip, model_env, workdir) -> list[np.ndarray]:
    """The 12-frame clip's generated frames at --multi 4, by --local."""
    out = workdir / "local-4x"
    run_cli("--video_path", str(clip), "--output_dir", str(out), "--local", "--seed", "3", "--multi", "4",
            "--save_frames", "--codec", "ffv1", "--no_progress", env=model_env)
    return generated(out)


@pytest.mark.parametrize(("transport", "flow"), [("ws", "a"), ("http", "b")])
def test_4x_split_equals_local_at_exactly_4_times_the_ntsc_rate(servers, clip, local_run, local_4x, workdir,
                                                                transport, flow):
    out = workdir / f"4x-{transport}-{flow}"
    result = split(servers, "--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--fps",
                   "120000/1001", "--transport", transport, "--flow", flow, "--save_frames", "--codec", "ffv1")
    assert f"{N_FRAMES} frames in, {4 * (N_FRAMES - 1) + 1} out at 120000/1001 fps (4x)" in result.stdout
    info = probe_video(out / "interpolated.mp4")
    assert info.rate == 4 * NTSC == Fraction(120000, 1001)
    video = list(read_frames(out / "interpolated.mp4"))
    assert len(video) == 4 * (N_FRAMES - 1) + 1
    frames = generated(out)
    assert len(frames) == len(local_4x) == 3 * (N_FRAMES - 1)
    for g, (a, b) in enumerate(zip(frames, local_4x, strict=True)):
        assert np.array_equal(a, b), f"generated frame {g} differs from --local"
    for k in range(N_FRAMES - 1):  # t = 1/2 is the 2x job's frame; the video holds every frame in its place
        assert np.array_equal(frames[3 * k + 1], local_run[k])
        assert all(np.array_equal(video[4 * k + j], frames[3 * k + j - 1]) for j in (1, 2, 3))


def test_an_output_rate_that_is_no_multiple_is_refused_in_one_line(clip, capsys):
    from edensplit.cli import main

    assert main(["interpolate", "--video_path", str(clip), "--fps", "50", "--local"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("edensplit interpolate: error: --fps 50 is not 2, 4 or 8 times the input's 30000/1001 "
                           "(29.97) fps: frames are made by halving intervals, so the output rate is one of "
                           "60000/1001 (59.94), 120000/1001 (119.88), 240000/1001 (239.76)")
    assert main(["interpolate", "--video_path", str(clip), "--fps", "59.94", "--multi", "4", "--local"]) == 2
    assert "--fps 59.94 is 2 times the input's 30000/1001 fps, but --multi 4 was given" in capsys.readouterr().err


def test_a_hard_cut_and_a_still_pair_are_repeated_and_audio_and_subtitles_stay_in_sync(servers, workdir):
    cloud, edge = servers
    frames = with_stills(cut_frames(6, 6, 96, 72), repeat_at=[2])  # pairs: 0 1 still 2 3 4 5 cut 6 7 8 9 10 11
    cut = 6  # the pair (6, 7) crosses the cut
    clip = write_av_clip(workdir / "cut-av.mkv", frames, NTSC, "libopus", onset_frame=4,
                         subtitles=[(100, 300, "before the cut"), (300, 200, "after it")])
    out = workdir / "cut-av"
    before = edge_requests(edge)
    result = split(servers, "--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--codec", "ffv1",
                   "--save_frames", "--preview")
    sent = edge_requests(edge) - before
    assert "scene cuts: 1, still pairs: 1 (earlier frame repeated, nothing sent); midpoints interpolated: 10" \
        in result.stdout
    # 10 pairs interpolated, and 3 session runs (from the start, after the still, after the cut) each starting with
    # one store-only request: nothing at all for the two pairs skipped.
    assert sent == 10 + 3
    video = list(read_frames(out / "interpolated.mp4"))
    assert len(video) == 2 * len(frames) - 1
    assert np.array_equal(video[2 * cut + 1], frames[cut]) and np.array_equal(video[2 * 2 + 1], frames[2])
    assert not np.array_equal(video[2 * cut + 1], video[2 * cut + 2])  # the new shot starts at the next frame
    assert len(generated(out)) == len(frames) - 1
    # Audio: the same sample rate, the same length within one frame, the tone starting at the same time.
    before_audio, rate_in, start_in = audio_samples(clip)
    after_audio, rate_out, start_out = audio_samples(out / "interpolated.mp4")
    assert rate_out == rate_in == 48000 and abs(len(after_audio) - len(before_audio)) / rate_in < 1 / NTSC
    onset_in = start_in + Fraction(int(np.argmax(np.abs(before_audio) > 0.05)), rate_in)
    onset_out = start_out + Fraction(int(np.argmax(np.abs(after_audio) > 0.05)), rate_out)
    assert abs(onset_out - onset_in) < 1 / (4 * NTSC)
    with av.open(str(out / "interpolated.mp4")) as container:
        assert [s.type for s in container.streams] == ["video", "audio", "subtitle"]
        assert container.streams.audio[0].codec_context.name == "opus"  # copied, not re-encoded
    assert "subtitle stream #2 (srt) cannot go into mp4 as it is: its text carried over as mov_text" in result.stderr
    sheet = read_png(out / "preview.png")
    assert sheet.shape == (16 + 4 * 72 + 5 * 4, 3 * 96 + 4 * 4, 3)  # 4 pairs: frame k, t=1/2, frame k+1


def test_an_image_folder_round_trips_with_a_video_at_the_rate_asked(servers, local_run, workdir):
    """The folder holds the first 6 frames of the session's clip, so its generated frames are --local's of the clip."""
    folder = workdir / "folder-in"
    folder.mkdir()
    frames = sample_frames(6, 96, 72)
    for k, frame in enumerate(frames):
        write_png(folder / f"img{k + 1}.png", frame)  # img1 ... img6
    out = workdir / "folder-out"
    result = split(servers, "--input_dir", str(folder), "--output_dir", str(out), "--seed", "3", "--fps", "48")
    wrote = f"wrote {out / 'interpolated'} and {out / 'interpolated.mp4'}: 6 frames in, 11 out at 48 fps"
    assert wrote in result.stdout
    written = list_images(out / "interpolated")
    assert [p.name for p in written] == [f"{i:06d}.png" for i in range(11)]
    for k, frame in enumerate(frames):
        assert np.array_equal(read_png(written[2 * k]), frame)
    for k in range(5):
        assert np.array_equal(read_png(written[2 * k + 1]), local_run[k])
    assert probe_video(out / "interpolated.mp4").rate == 48
    assert sum(1 for _ in read_frames(out / "interpolated.mp4")) == 11


LINE = re.compile(r"edensplit interpolate: (\d+)/(\d+) frames \((\d+)%\), \d+\.\d frames/s(, ETA \d+:\d\d)?, "
                  r"\d+\.\d MB sent")


def test_progress_is_plain_lines_off_a_terminal_and_quiet_prints_nothing(servers, workdir):
    """stderr is a pipe here: lines, no carriage returns or escape codes; a pan is no cut."""
    clip = write_clip(workdir / "pan.mkv", pan_frames(10, 96, 72, speed=3.0))
    out = workdir / "progress"
    result = split(servers, "--video_path", str(clip), "--output_dir", str(out), "--pix_fmt", "yuv444p",
                   env={"EDENSPLIT_PROGRESS_EVERY": "0"})
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    lines = result.stderr.splitlines()
    progress = [line for line in lines if LINE.fullmatch(line)]
    assert len(progress) >= 19 and progress[-1].startswith("edensplit interpolate: 19/19 frames (100%)")
    assert [int(LINE.fullmatch(line).group(1)) for line in progress] == sorted(
        int(LINE.fullmatch(line).group(1)) for line in progress)
    summary = [line for line in lines if "time by stage" in line]
    assert len(summary) == 1 and all(stage in summary[0] for stage in
                                     ("read", "scene detection", "encode (cloud)", "transfer", "interpolate (edge)",
                                      "keep", "write", "MB sent"))
    assert set(lines) == set(progress) | set(summary), lines  # nothing else on stderr
    assert "scene cuts: 0, still pairs: 0" in result.stdout  # the pan is not a cut
    with av.open(str(out / "interpolated.mp4")) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"
    quiet = split(servers, "--video_path", str(clip), "--output_dir", str(workdir / "quiet"), "--quiet")
    assert quiet.stdout == "" and quiet.stderr == ""
    assert (workdir / "quiet" / "interpolated.mp4").is_file()


def test_an_interrupted_4x_job_resumes_where_it_stopped(servers, clip, local_4x, workdir):
    """(Another --multi starting over is tested in tests/client/test_jobs.py.)"""
    out = workdir / "resume-4x"
    output = out / "interpolated.mp4"
    cloud, edge = servers
    args = ("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--multi", "4", "--codec", "ffv1",
            "--save_frames", "--no_progress", "--cloud_url", cloud.url, "--edge_url", edge.url)
    proc = start_cli(*args)
    wait_for_saved({output: proc}, 4, hold=True)  # stopped there, so that the Ctrl-C lands mid-job
    proc.send_signal(signal.SIGINT)
    resume({output: proc})
    code, _, err = finish(proc, timeout=60)
    done = saved_frames(output)
    assert code == 130 and "run the same command again to resume" in err and not output.exists()
    assert 4 <= done < 3 * (N_FRAMES - 1)
    rerun = run_cli(*args, env={})
    assert f"resumed after {3 * (done // 3)} generated frames" in rerun.stdout
    assert f"resuming {output}: {done} generated frames already done" in rerun.stderr
    video = list(read_frames(output))
    assert len(video) == 4 * (N_FRAMES - 1) + 1
    for g, frame in enumerate(local_4x):
        k, j = divmod(g, 3)
        assert np.array_equal(video[4 * k + j + 1], frame), f"generated frame {g} differs from an uninterrupted run"
