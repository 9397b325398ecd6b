"""Video jobs stream: frames are pulled as they are needed, a bounded number of pairs is in flight,
and the output order is f0, m01, f1, m12, ... Jobs are resumable (the same job run again goes on from its last
saved frame, and gives the same file; another job's state is dropped, saying why) and never leave an
unfinished file at the output path."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from edensplit.client.backends import LocalBackend, Wrapper
from edensplit.client.jobs import interpolate_pair_files, interpolate_stream, interpolate_video
from edensplit.client.resume import JobState, saved_frames, state_dir
from edensplit.client.spec import JobResult
from edensplit.errors import EdenError, ErrorCode
from edensplit.model.pipeline import LocalPipeline
from edensplit.model.seeds import noise_seed
from edensplit.video.images import write_png
from edensplit.video.sample import make_sample_clip
from tests.conftest import make_frames


class Watched(Wrapper):
    """The real local backend, watched: how many pairs run at once. Pair 0 finishes only once pair 1 has
    started, which can happen only if the stream submits the next pair while the previous one runs."""

    def __init__(self, backend: LocalBackend):
        super().__init__(backend)
        self.backend, self.running, self.most, self.lock = backend, 0, 0, threading.Lock()
        self.second_started = threading.Event()

    def interpolate_pair(self, frame0, frame1, seed, index):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        if index == 1:
            self.second_started.set()
        try:
            if index == 0:
                assert self.second_started.wait(timeout=30), "pair 1 never started while pair 0 ran"
            return self.backend.interpolate_pair(frame0, frame1, seed, index)
        finally:
            with self.lock:
                self.running -= 1


def test_frames_are_pulled_lazily_and_pairs_overlap_up_to_the_window(tiny_model):
    frames = make_frames(20, 40, 70)
    pulled = []

    def source():
        for k, frame in enumerate(frames):
            pulled.append(k)
            yield frame

    backend = Watched(LocalBackend(LocalPipeline(tiny_model)))
    stream = interpolate_stream(backend, source(), base_seed=5, window=2)
    out = [next(stream) for _ in range(3)]  # f0, m01, f1
    assert len(pulled) <= 4  # not the whole video: at most the window's frames ahead
    out += list(stream)
    assert len(pulled) == 20 and len(out) == 39
    assert backend.most == 2  # the next pair runs while the previous one is still running
    assert [generated for _, generated in out] == [False, True] * 19 + [False]
    for k in range(19):
        assert np.array_equal(out[2 * k][0], frames[k])
        expected = LocalPipeline(tiny_model).interpolate(frames[k], frames[k + 1], seed=noise_seed(5, k))
        assert np.array_equal(out[2 * k + 1][0], expected)


# -- resumable jobs and the temporary name --------------------------------------------------------

class Interrupted(LocalBackend):
    """The local backend, counting the pairs it is asked for; pair `stop_at` raises KeyboardInterrupt (Ctrl-C
    arriving while it runs) once the pairs before it are in the output."""

    def __init__(self, pipeline: LocalPipeline, stop_at: int | None = None):
        super().__init__(pipeline)
        self.stop_at, self.pairs, self.lock = stop_at, [], threading.Lock()

    def interpolate_pair(self, frame0, frame1, seed, index=0):
        with self.lock:
            self.pairs.append(index)
        if index == self.stop_at:
            raise KeyboardInterrupt
        return super().interpolate_pair(frame0, frame1, seed, index)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    return make_sample_clip(tmp_path_factory.mktemp("resume") / "in.mkv", n_frames=10, width=64, height=48)


def run_job(backend, clip: Path, out: Path, codec: str = "ffv1", **kwargs) -> JobResult:
    return interpolate_video(backend, clip, out, seed=3, codec=codec, progress=False, resume=True,
                             fingerprint={"num_steps": 2}, **kwargs)


@pytest.mark.parametrize("codec", ["ffv1", "libx264"])
def test_an_interrupted_job_resumes_from_its_last_frame_and_equals_an_uninterrupted_one(tiny_model, long_clip,
                                                                                          tmp_path, codec):
    pipeline = LocalPipeline(tiny_model)
    whole = run_job(LocalBackend(pipeline), long_clip, tmp_path / "whole", codec)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_job(Interrupted(pipeline, stop_at=5), long_clip, out, codec)
    assert not (out / "interpolated.mp4").exists()  # nothing at the output path while unfinished
    done = saved_frames(out / "interpolated.mp4")
    assert 3 <= done <= 5  # pairs 0-4 finished; the window (2) may hold the last ones back
    said: list[str] = []
    rerun = Interrupted(pipeline)
    result = run_job(rerun, long_clip, out, codec, say=said.append)
    assert sorted(rerun.pairs) == list(range(done, 9)) and result.resumed_from == done
    assert said == [f"resuming {out / 'interpolated.mp4'}: {done} generated frames already done (state in "
                    f"{state_dir(out / 'interpolated.mp4')})"]
    assert not state_dir(out / "interpolated.mp4").exists() and (result.frames_in, result.frames_out) == (10, 19)
    # The same file, byte for byte (the lossy codec too: the video is written again from the same frames).
    assert (out / "interpolated.mp4").read_bytes() == whole.output.read_bytes()


def test_another_seed_or_input_starts_over_and_says_why(tiny_model, long_clip, tmp_path):
    pipeline = LocalPipeline(tiny_model)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(Interrupted(pipeline, stop_at=4), long_clip, out)
    said: list[str] = []
    again = Interrupted(pipeline)
    interpolate_video(again, long_clip, out, seed=4, codec="ffv1", progress=False, resume=True,
                      fingerprint={"num_steps": 2}, say=said.append)
    assert sorted(again.pairs) == list(range(9))
    assert len(said) == 1 and "another job (seed 3 -> 4); starting over" in said[0]
    copy = tmp_path / "copy.mkv"
    copy.write_bytes(long_clip.read_bytes())
    with pytest.raises(KeyboardInterrupt):
        interpolate_video(Interrupted(pipeline, stop_at=4), long_clip, out, seed=4, codec="ffv1", progress=False,
                          resume=True, fingerprint={"num_steps": 2})
    said.clear()
    interpolate_video(LocalBackend(pipeline), copy, out, seed=4, codec="ffv1", progress=False, resume=True,
                      fingerprint={"num_steps": 2}, say=said.append)
    assert len(said) == 1 and "another job (the input); starting over" in said[0]


def test_without_resume_a_saved_state_is_dropped(tiny_model, long_clip, tmp_path):
    pipeline = LocalPipeline(tiny_model)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(Interrupted(pipeline, stop_at=4), long_clip, out)
    again = Interrupted(pipeline)
    said: list[str] = []
    interpolate_video(again, long_clip, out, seed=3, codec="ffv1", progress=False, resume=False,
                      fingerprint={"num_steps": 2}, say=said.append)
    assert sorted(again.pairs) == list(range(9)) and "--no_resume: starting" in said[0]


def test_an_unreadable_saved_frame_is_done_again_with_those_after_it(tiny_model, long_clip, tmp_path):
    pipeline = LocalPipeline(tiny_model)
    whole = run_job(LocalBackend(pipeline), long_clip, tmp_path / "whole")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(Interrupted(pipeline, stop_at=6), long_clip, out)
    state = state_dir(out / "interpolated.mp4")
    assert saved_frames(out / "interpolated.mp4") >= 4
    (state / "frames" / "000002.png").write_bytes(b"\x89PNG truncated by a crash")
    rerun = Interrupted(pipeline)
    run_job(rerun, long_clip, out)
    assert sorted(rerun.pairs) == list(range(2, 9))
    assert (out / "interpolated.mp4").read_bytes() == whole.output.read_bytes()


def test_a_job_already_running_on_the_same_output_is_refused(long_clip, tmp_path):
    output = tmp_path / "interpolated.mp4"
    first = JobState(output, {"seed": 0})
    first.open()
    try:
        with pytest.raises(EdenError, match="another edensplit job is writing"):
            JobState(output, {"seed": 0}).open()
    finally:
        first.close()


def test_a_frame_pair_is_written_under_a_temporary_name(tiny_model, tmp_path):
    frames = make_frames(2, 40, 70)
    paths = [write_png(tmp_path / f"f{i}.png", f) for i, f in enumerate(frames)]
    out = tmp_path / "out"
    out.mkdir()
    (out / "interpolated.png").write_bytes(b"an older result")

    class Failing:
        def interpolate_pair(self, *args):
            assert not (out / "interpolated.png").exists()  # the old result is gone before the new is made
            raise EdenError("the edge is down", code=ErrorCode.UPSTREAM_ERROR)

    with pytest.raises(EdenError):
        interpolate_pair_files(Failing(), paths[0], paths[1], out)
    assert list(out.iterdir()) == []
    result = interpolate_pair_files(LocalBackend(LocalPipeline(tiny_model)), paths[0], paths[1], out, seed=2)
    assert [p.name for p in out.iterdir()] == ["interpolated.png"] and result.output == out / "interpolated.png"


# -- multipliers, image folders and scene cuts in resumable jobs ----------------------------------------

def test_an_interrupted_4x_job_resumes_by_whole_pairs_and_equals_an_uninterrupted_one(tiny_model, long_clip,
                                                                                       tmp_path):
    pipeline = LocalPipeline(tiny_model)
    whole = run_job(LocalBackend(pipeline), long_clip, tmp_path / "whole", multi=4)
    assert (whole.frames_in, whole.frames_out, whole.multi) == (10, 37, 4)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_job(Interrupted(pipeline, stop_at=5), long_clip, out, multi=4)  # level 1's pair 5
    saved = saved_frames(out / "interpolated.mp4")
    rerun = Interrupted(pipeline)
    result = run_job(rerun, long_clip, out, multi=4)
    pairs_done = saved // 3
    assert result.resumed_from == 3 * pairs_done and pairs_done >= 2
    assert sorted(rerun.pairs) == list(range(pairs_done, 9))  # level 1 goes on from the first pair not whole
    assert (out / "interpolated.mp4").read_bytes() == whole.output.read_bytes()
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_job(Interrupted(pipeline, stop_at=5), long_clip, out, multi=4)
    run_job(LocalBackend(pipeline), long_clip, out, multi=2, say=said.append)
    assert len(said) == 1 and "another job (multi 4 -> 2); starting over" in said[0]


def test_an_image_folder_job_round_trips_and_resumes(tiny_model, tmp_path):
    from edensplit.client.jobs import interpolate_folder
    from edensplit.video.images import list_images, read_png
    from edensplit.video.reading import probe_video, read_frames

    frames = [np.asarray(f) for f in make_frames(6, 40, 70, seed=2)]
    folder = tmp_path / "in"
    folder.mkdir()
    for k, frame in enumerate(frames):
        write_png(folder / f"shot_{k + 1:03d}.png", frame)
    pipeline = LocalPipeline(tiny_model)

    def job(backend, out, **kwargs):
        return interpolate_folder(backend, folder, out, seed=3, multi=4, fps=Fraction(96), codec="ffv1", resume=True,
                                  progress=False, scene_detect=False, fingerprint={"num_steps": 2}, **kwargs)

    whole = job(LocalBackend(pipeline), tmp_path / "whole")
    written = list_images(whole.output)
    assert [p.name for p in written] == [f"{i:06d}.png" for i in range(21)]
    for k, frame in enumerate(frames):  # the inputs come back as they were, every 4th frame
        assert np.array_equal(read_png(written[4 * k]), frame)
    expected = [f for f, _ in interpolate_stream(LocalBackend(LocalPipeline(tiny_model)), frames, 3)]
    for k in range(5):  # t = 1/2 is the 2x job's frame
        assert np.array_equal(read_png(written[4 * k + 2]), expected[2 * k + 1])
    assert whole.video == tmp_path / "whole" / "interpolated.mp4"
    info = probe_video(whole.video)
    assert info.rate == 96 and sum(1 for _ in read_frames(whole.video)) == 21
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        job(Interrupted(pipeline, stop_at=3), out)
    assert not (out / "interpolated").exists() and not (out / "interpolated.mp4").exists()
    rerun = Interrupted(pipeline)
    result = job(rerun, out)
    assert result.resumed_from >= 3 and min(rerun.pairs) == result.resumed_from // 3
    assert [read_png(p).tobytes() for p in list_images(result.output)] == [read_png(p).tobytes() for p in written]
    assert (out / "interpolated.mp4").read_bytes() == whole.video.read_bytes()


def test_a_cut_in_a_video_job_repeats_the_earlier_frame_and_is_counted(tiny_model, tmp_path):
    from tests.media import cut_frames, with_stills, write_clip

    clip = write_clip(tmp_path / "cut.mkv", with_stills(cut_frames(4, 4, 64, 48), repeat_at=[1]))
    backend = Interrupted(LocalPipeline(tiny_model))
    result = run_job(backend, clip, tmp_path / "out", save_frames=True)
    assert (result.cuts, result.stills, result.sent_pairs) == (1, 1, 6)
    assert sorted(backend.pairs) == [0, 2, 3, 5, 6, 7]  # pair 1 (still) and 4 (the cut) not asked for
    from edensplit.video.reading import read_frames

    out = list(read_frames(result.output))
    inputs = list(read_frames(clip))
    assert np.array_equal(out[2 * 4 + 1], inputs[4]) and np.array_equal(out[2 * 1 + 1], inputs[1])


def test_a_closed_state_keeps_no_frame_still_arriving(tmp_path):
    """A pair in flight when the job stopped must not add a frame after the job said how many it saved."""
    state = JobState(tmp_path / "interpolated.mp4", {"seed": 0})
    state.open()
    state.commit(0, make_frames(1, 8, 8)[0])
    state.close()
    state.commit(1, make_frames(1, 8, 8)[0])
    assert saved_frames(tmp_path / "interpolated.mp4") == 1
    assert sorted(p.name for p in state.frames_dir.iterdir()) == ["000000.png"]  # no temporary file left either
