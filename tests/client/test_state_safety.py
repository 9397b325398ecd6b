"""A job's state in a shared output directory: only this user's private folder is used. A state path that is a
symbolic link, not a directory, owned by another user, writable by others, or that holds a symbolic link is
refused in one line (exit 2) before anything is read, written or removed, and what it points at is untouched;
frames planted in a state this user did not make are never spliced into an output."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from edensplit.client.backends import LocalBackend
from edensplit.client.jobs import interpolate_video
from edensplit.client.resume import JobState, saved_frames, state_dir
from edensplit.errors import EdenError
from edensplit.model.pipeline import LocalPipeline
from edensplit.video.images import write_png
from edensplit.video.reading import read_frames
from edensplit.video.sample import make_sample_clip
from tests.conftest import make_frames, run_cli_here

OTHER_UID = 65534  # nobody


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory) -> Path:
    return make_sample_clip(tmp_path_factory.mktemp("state") / "in.mkv", n_frames=4, width=32, height=24)


def victim(root: Path) -> Path:
    """Another folder of this user's, shaped like a job's state: what a planted link points at."""
    folder = root / "victim"
    (folder / "frames").mkdir(parents=True)
    write_png(folder / "frames" / "000000.png", make_frames(1, 24, 32)[0])
    (folder / "partial.mp4").write_bytes(b"a precious file")
    (folder / "job.json").write_text('{"precious": true}')
    return folder


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every path under `root` (links not followed): its mode and content (a link's target)."""
    seen: dict[str, tuple[int, bytes | str | None]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        content = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
        seen[str(path.relative_to(root))] = (st.st_mode, content)
    return seen


def interpolate(clip: Path, out: Path, model_env: dict[str, str], *more: str):
    return run_cli_here(["interpolate", "--video_path", str(clip), "--output_dir", str(out), "--local",
                         "--no_progress", *more], model_env)


def assert_refused(result, *words: str) -> str:
    """Exit 2 and exactly one line, the CLI's error (no traceback, no progress, no model warnings)."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("edensplit interpolate: error: refusing the job state "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_symlinked_state_folder_is_refused_and_its_target_untouched(small_clip, tmp_path, model_env):
    target = victim(tmp_path)
    before = snapshot(target)
    out = tmp_path / "out"
    out.mkdir()
    state_dir(out / "interpolated.mp4").symlink_to(target)
    result = interpolate(small_clip, out, model_env)
    assert snapshot(target) == before
    line = assert_refused(result, "is a symbolic link", str(target))
    assert str(state_dir(out / "interpolated.mp4")) in line
    assert sorted(p.name for p in out.iterdir()) == [".interpolated.mp4.job"]
    assert saved_frames(out / "interpolated.mp4") == 0  # its frames are not this job's either


@pytest.mark.parametrize("kind", ["file", "dangling link", "link to a file"])
def test_a_state_path_that_is_not_a_folder_is_refused(small_clip, tmp_path, model_env, kind):
    out = tmp_path / "out"
    out.mkdir()
    state = state_dir(out / "interpolated.mp4")
    precious = tmp_path / "precious.txt"
    if kind == "file":
        state.write_bytes(b"a file of the user's")
    elif kind == "dangling link":
        state.symlink_to(tmp_path / "nowhere")
    else:
        precious.write_bytes(b"a file of the user's")
        state.symlink_to(precious)
    before = snapshot(tmp_path)
    assert_refused(interpolate(small_clip, out, model_env),
                   "is not a directory" if kind == "file" else "is a symbolic link")
    assert snapshot(tmp_path) == before  # nothing made, removed or written: not even the link's target


@pytest.mark.parametrize("name", [".job.json.tmp", "job.json", "lock", "frames", "partial.mp4"])
def test_a_link_planted_in_the_state_is_refused_and_not_followed(small_clip, tmp_path, model_env, name):
    target = victim(tmp_path)
    before = snapshot(target)
    out = tmp_path / "out"
    state = state_dir(out / "interpolated.mp4")
    state.mkdir(parents=True, mode=0o700)
    (state / name).symlink_to(target / "frames" if name == "frames" else target / "job.json")
    result = interpolate(small_clip, out, model_env)
    assert snapshot(target) == before
    assert_refused(result, f"holds a symbolic link ({name})")
    assert (state / name).is_symlink()  # the state is left as it was, for its owner to look at


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702], ids=lambda mode: f"{mode:04o}")
def test_a_state_folder_others_can_write_is_refused(small_clip, tmp_path, model_env, mode):
    target = victim(tmp_path)
    before = snapshot(target)
    out = tmp_path / "out"
    state = state_dir(out / "interpolated.mp4")
    (state / "frames").mkdir(parents=True)
    (state / ".job.json.tmp").symlink_to(target / "job.json")  # what someone else could have planted there
    state.chmod(mode)
    result = interpolate(small_clip, out, model_env)
    assert snapshot(target) == before
    assert_refused(result, f"is writable by other users (mode {mode:04o})")
    assert stat.S_IMODE(state.lstat().st_mode) == mode


def test_a_state_folder_of_another_user_is_refused(small_clip, tmp_path, model_env, monkeypatch):
    """Through the owner check's seam (any user can run this); the next test chowns for real where root can."""
    out = tmp_path / "out"
    state = state_dir(out / "interpolated.mp4")
    (state / "frames").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    write_png(state / "frames" / "000000.png", make_frames(1, 24, 32)[0])
    before = snapshot(state)
    me = state.lstat().st_uid
    monkeypatch.setattr("edensplit.client.private.owner_uid", lambda: me + 1)
    assert_refused(interpolate(small_clip, out, model_env), f"is owned by another user (uid {me}, not {me + 1})")
    assert snapshot(state) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can chown a folder to another user; the owner check itself "
                                                 "is tested through its seam in the test above")
def test_a_state_folder_chowned_to_another_user_is_refused(small_clip, tmp_path, model_env):
    out = tmp_path / "out"
    state = state_dir(out / "interpolated.mp4")
    (state / "frames").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    os.chown(state, OTHER_UID, OTHER_UID)
    before = snapshot(state)
    assert_refused(interpolate(small_clip, out, model_env), f"is owned by another user (uid {OTHER_UID}, not 0)")
    assert snapshot(state) == before


@pytest.mark.parametrize("how", ["world-writable", "group-writable", "another owner"])
def test_frames_planted_in_a_state_this_user_did_not_make_are_never_spliced(tiny_model, small_clip, tmp_path, how,
                                                                           monkeypatch):
    """The fingerprint is predictable, so a planted state would match: it is refused for who made it."""
    pipeline = LocalPipeline(tiny_model)

    class Stop(LocalBackend):
        def interpolate_pair(self, frame0, frame1, seed, index=0):
            if index == 2:
                raise KeyboardInterrupt
            return super().interpolate_pair(frame0, frame1, seed, index)

    def job(backend):
        return interpolate_video(backend, small_clip, out, seed=3, codec="ffv1", progress=False, resume=True,
                                 fingerprint={"num_steps": 2})

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        job(Stop(pipeline))
    state = state_dir(out / "interpolated.mp4")
    assert saved_frames(out / "interpolated.mp4") >= 1
    planted = np.zeros((24, 32, 3), np.uint8)
    planted[..., 0] = 255
    write_png(state / "frames" / "000000.png", planted)  # someone else's frame, in a state with the right fingerprint
    if how == "another owner":
        me = state.lstat().st_uid
        monkeypatch.setattr("edensplit.client.private.owner_uid", lambda: me + 1)
    else:
        state.chmod(0o777 if how == "world-writable" else 0o770)
    with pytest.raises(EdenError, match="refusing the job state"):
        job(LocalBackend(pipeline))
    assert not (out / "interpolated.mp4").exists()
    # The counterfactual: the same state, private and this user's again, is resumed, the planted frame with it.
    # Only who made the folder keeps the frame out.
    monkeypatch.undo()
    state.chmod(0o700)
    result = job(LocalBackend(pipeline))
    assert result.resumed_from >= 1
    assert np.array_equal(next(x for i, x in enumerate(read_frames(result.output)) if i == 1), planted)


def test_a_new_state_is_private_and_an_own_older_one_is_made_so(tmp_path):
    output = tmp_path / "interpolated.mp4"
    state = JobState(output, {"seed": 0})
    assert state.open() == 0
    state.commit(0, make_frames(1, 8, 8)[0])
    state.close()
    folder = state_dir(output)
    assert stat.S_IMODE(folder.lstat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "frames").lstat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "lock").lstat().st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == ["frames", "job.json", "lock"]  # no temporary file left
    folder.chmod(0o755)  # as an older version left it (readable by others, writable by no one else)
    again = JobState(output, {"seed": 0})
    assert again.open() == 1
    again.close()
    assert stat.S_IMODE(folder.lstat().st_mode) == 0o700


# -- the job's files in the output directory itself ----------------------------------------------------

@pytest.mark.parametrize("job", ["pair", "preview"])
def test_a_link_planted_at_an_outputs_temporary_name_is_not_written_through(small_clip, tmp_path, model_env, job):
    """The old temporary names (`.interpolated.png.partial`, `.preview.png.partial`) were predictable."""
    precious = tmp_path / "precious.txt"
    precious.write_bytes(b"a file of the user's")
    out = tmp_path / "out"
    out.mkdir()
    name = "interpolated.png" if job == "pair" else "preview.png"
    (out / f".{name}.partial").symlink_to(precious)
    if job == "pair":
        frames = [write_png(tmp_path / f"f{i}.png", f) for i, f in enumerate(make_frames(2, 24, 32))]
        args = ["--frame_0_path", str(frames[0]), "--frame_1_path", str(frames[1])]
    else:
        args = ["--video_path", str(small_clip), "--preview"]
    result = run_cli_here(["interpolate", *args, "--output_dir", str(out), "--local", "--no_progress"], model_env)
    assert result.returncode == 0, result.stderr
    assert precious.read_bytes() == b"a file of the user's"
    written = out / name
    assert not written.is_symlink() and written.read_bytes().startswith(b"\x89PNG")
    assert not [p for p in out.iterdir() if p.name.startswith(f".{name}.") and p.name != f".{name}.partial"]


def test_a_symlinked_generated_folder_is_refused(small_clip, tmp_path, model_env):
    target = victim(tmp_path)
    before = snapshot(target)
    out = tmp_path / "out"
    out.mkdir()
    (out / "generated").symlink_to(target / "frames")
    result = interpolate(small_clip, out, model_env, "--save_frames")
    assert snapshot(target) == before
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and lines[-1] == (
        f"edensplit interpolate: error: refusing to write --save_frames through the symbolic link {out / 'generated'} "
        f"(to {target / 'frames'})"), result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["generated"]  # no state made either
