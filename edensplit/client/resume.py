"""Resumable video jobs: the state a job keeps next to its output, so that the same command, run again after
a crash, a Ctrl-C or a failed server, goes on from the last completed frame.

The state of the job writing `OUT/interpolated.mp4` is the folder `OUT/.interpolated.mp4.job/`:

- `job.json`: the job's fingerprint: the input (resolved path, size, modification time in ns; for an image
  folder, a digest of its images' names, sizes and times) and every option that changes the generated
  frames (seed, multiplier, scene detection and its threshold, sampler, wire dtype; for `--local` the model
  and its dtype). A state with another fingerprint is another job's: it is removed and the job starts over,
  saying what differs.
- `frames/NNNNNN.png`: generated frame k (at a multiplier M, input pair p's frames are p(M-1) ...
  p(M-1) + M-2; a pair is done when all of them are), written losslessly (fast zlib level) by the thread that got
  it, as soon as it arrives (to a temporary name, then renamed, so a file there is always whole). The
  frames done are the files 000000, 000001, ... up to the first gap; pairs in flight when the job
  stopped (at most the window) are not there, and are redone.
- `partial.mp4` (the output's suffix): the output video while it is written. It is renamed to the
  output path only when its last frame is in, then the folder is removed: the output path never holds
  an unfinished video. An image-folder job's output is a folder of numbered PNGs, `partial/` while it
  is written (its generated frames hard links to `frames/`), and with `--fps` a video too
  (`partial-2.mp4`, one per further output).
- `lock`: held (flock) while a job runs, so two runs of one command cannot write the same state.

The output directory may be shared, so the state is private (`edensplit.client.private`): made mode 0700, and
an existing state path is used only if it is a real directory of this user's that no one else can write and
that holds no symbolic link; anything else is refused in one line, untouched. Every file in it is opened,
created (exclusively, under a random temporary name), renamed and removed relative to the folder's descriptor,
never through a link. Frames are read back only from such a folder, which only this user could have written:
frames planted by someone else (the fingerprint is predictable) are never spliced into an output.

A rerun writes the output video again from the start: the input frames are decoded again and the
generated ones read back from `frames/`, then the job goes on from the first frame not done (a
frame-once session starts again there, with one store-only request). The PNGs are lossless, so the
result is the uninterrupted run's frame for frame whatever the codec (lossy libx264 included: its input
frames are the same), and a rerun with another `--codec`/`--crf` still reuses them. Memory stays flat in
the video's length (frames stream through one at a time); the disk holds the PNGs, about what
`--save_frames` writes, until the job completes.

Why not re-read the partial output video instead: with the default lossy codec the resumed part would be
re-encoded from decoded frames (worse at each resume), and a video cut off by a crash has no index (MP4
writes it last) and cannot be read at all. PNGs survive a SIGKILL; writing the video again costs far
less than one generated frame.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edensplit.client.private import PrivateDir
from edensplit.errors import EdenError, ErrorCode, InputError
from edensplit.video.images import decode_image_file

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked against each other
    fcntl = None  # type: ignore[assignment]

STATE_VERSION = 1
PNG_LEVEL = 1
Say = Callable[[str], None]


def state_dir(output: Path) -> Path:
    """The state folder of the job writing `output`: `.NAME.job` next to it."""
    return output.parent / f".{output.name}.job"


def saved_frames(output: Path) -> int:
    """How many generated frames of the job writing `output` are saved (0 without a state, or with one that is
    not this user's private folder)."""
    try:
        state = PrivateDir.open(state_dir(output), create=False, tighten=False)
        if state is None:
            return 0
        with state:
            frames = state.subdir("frames", create=False, tighten=False)
            if frames is None:
                return 0
            with frames:
                return _contiguous(frames.names())
    except (EdenError, OSError):
        return 0


def check_state(output: Path) -> None:
    """Refuse (`UnsafeState`: one line, nothing touched) a state path next to `output` that is not this user's
    private folder, before a job starts."""
    state = PrivateDir.open(state_dir(output), create=False, tighten=False)
    if state is not None:
        with state:
            frames = state.subdir("frames", create=False, tighten=False)
            if frames is not None:
                frames.close()


def _frame_name(k: int) -> str:
    return f"{k:06d}.png"


def _contiguous(names: Sequence[str]) -> int:
    """The frames 0, 1, ... among `names` up to the first gap."""
    present = set(names)
    k = 0
    while _frame_name(k) in present:
        k += 1
    return k


def input_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies an input file: its resolved path, size and modification time (ns)."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def folder_identity(folder: str | os.PathLike[str], images: Sequence[Path]) -> dict[str, Any]:
    """What identifies an image folder input: its resolved path, its image count and a digest of their names,
    sizes and modification times (ns)."""
    digest = hashlib.sha256()
    for image in images:
        st = image.stat()
        digest.update(f"{image.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"path": str(Path(folder).resolve()), "images": len(images), "digest": digest.hexdigest()[:32]}


def _remove(path: Path) -> None:
    """Remove an older output at `path` (a file or a folder; a link there is removed, not followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """A short account of how two fingerprints differ ("seed 3 -> 4, the input")."""
    parts = []
    for key in sorted(set(saved) | set(wanted)):
        if saved.get(key) == wanted.get(key):
            continue
        parts.append("the input" if key == "input" else f"{key} {saved.get(key)} -> {wanted.get(key)}")
    return ", ".join(parts) or "an older state format"


class JobState:
    """The on-disk state of one video job (see the module docstring): open, commit frames, finish."""

    def __init__(self, output: str | os.PathLike[str], fingerprint: Mapping[str, Any], *, resume: bool = True,
                 say: Say | None = None, extra: Sequence[str | os.PathLike[str]] = ()):
        """`output`: the job's output (a file, or a folder of frames); `extra`: further outputs written with it
        (each under its own temporary name, renamed by `finish`)."""
        self.output = Path(output)
        self.dir = state_dir(self.output)
        self.frames_dir = self.dir / "frames"
        self.partial = self.dir / f"partial{self.output.suffix}"
        self.extra = {Path(p): self.dir / f"partial-{i}{Path(p).suffix}" for i, p in enumerate(extra, start=2)}
        self.fingerprint = {"version": STATE_VERSION, **fingerprint}
        self.resume, self.say = resume, say or (lambda message: None)
        self._lock: int | None = None
        self._state: PrivateDir | None = None
        self._frames: PrivateDir | None = None
        self._stopped = False  # closed: frames still arriving from pairs in flight are not kept
        self._writing = 0  # frames being written: the folders stay open until the last is in
        self._keeping = threading.Lock()

    def open(self) -> int:
        """Take the job's lock and return how many generated frames are already done: those of a saved state
        with this fingerprint, else 0 (another job's state, or --no_resume: removed, and said so). A state path
        that is not this user's private folder is refused (`UnsafeState`), untouched."""
        self._state = state = PrivateDir.open(self.dir)
        assert state is not None
        try:
            self._lock = state.open_file("lock", os.O_RDWR | os.O_CREAT)
            if fcntl is not None:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise EdenError(f"another edensplit job is writing {self.output} (its state {self.dir} is locked)",
                            code=ErrorCode.INVALID_PARAMETER) from None
        except BaseException:
            self.close()
            raise
        try:
            return self._open_frames(state)
        except BaseException:
            self.close()
            raise

    def _open_frames(self, state: PrivateDir) -> int:
        self._frames = state.subdir("frames", create=False)
        saved = self._saved_fingerprint()
        names = self._frames.names() if self._frames is not None else []
        done = _contiguous(names) if saved == self.fingerprint else 0
        if done and self.resume:
            self.say(f"resuming {self.output}: {done} generated frames already done (state in {self.dir})")
        else:
            if done:
                self.say(f"--no_resume: starting {self.output} over ({done} saved frames in {self.dir} dropped)")
            elif saved is not None and saved != self.fingerprint and _contiguous(names):
                self.say(f"{self.dir} holds the state of another job ({_differences(saved, self.fingerprint)}); "
                         "starting over")
            done = 0
            if self._frames is not None:
                self._frames.close()
                self._frames = None
                state.remove("frames")
            self._write_fingerprint()
        if self._frames is None:
            self._frames = state.subdir("frames")
        self.drop_from(done)  # frames kept past a gap (in flight when the job stopped) are done again
        for output, partial in ((self.output, self.partial), *self.extra.items()):
            state.remove(partial.name)
            _remove(output)  # an older output there would look like this job's result
        return done

    def _saved_fingerprint(self) -> dict[str, Any] | None:
        assert self._state is not None
        data = self._state.read_bytes("job.json")
        try:
            saved = json.loads(data) if data is not None else None
        except ValueError:
            return None
        return saved.get("fingerprint") if isinstance(saved, dict) else None

    def _write_fingerprint(self) -> None:
        assert self._state is not None
        text = json.dumps({"fingerprint": self.fingerprint, "output": self.output.name}, indent=1)
        self._state.write_atomic("job.json", lambda fp: fp.write(text.encode()))

    def frame_path(self, k: int) -> Path:
        """Where generated frame k is kept."""
        return self.frames_dir / _frame_name(k)

    def commit(self, k: int, frame: np.ndarray) -> Path:
        """Keep generated frame k (whole or not at all: written to a temporary name, then renamed). Thread-safe:
        frames may be kept in any order (the frames done are those up to the first gap). Once the state is
        closed (the job stopped), a frame still arriving is not kept: what a stopped job says it saved stays
        true."""
        final = self.frame_path(k)
        with self._keeping:
            frames = self._frames
            if self._stopped or frames is None:
                return final
            self._writing += 1
        try:
            image = Image.fromarray(np.ascontiguousarray(frame))
            # zlib level 1: a 480p frame in ~50 ms instead of ~180 ms at the default level, ~15% larger
            tmp = frames.write_temp(final.name, lambda fp: image.save(fp, format="PNG", compress_level=PNG_LEVEL))
            with self._keeping:
                if self._stopped:
                    frames.unlink(tmp)
                else:
                    frames.replace(tmp, final.name)
        finally:
            with self._keeping:
                self._writing -= 1
                if self._stopped and not self._writing:
                    self._release()
        return final

    def read(self, k: int, shape: tuple[int, ...]) -> np.ndarray | None:
        """Saved frame k, or None if it is unreadable or not of `shape` (then it and those after it are
        dropped, to be done again)."""
        assert self._frames is not None
        data = self._frames.read_bytes(_frame_name(k))
        try:
            frame = decode_image_file(io.BytesIO(data), self.frame_path(k), ("PNG",)) if data is not None else None
        except InputError:
            frame = None
        if frame is None or frame.shape != shape:
            self.drop_from(k)
            return None
        return frame

    def drop_from(self, k: int) -> None:
        """Forget generated frames k, k+1, ... (and temporary files a stopped job left)."""
        assert self._frames is not None
        for name in self._frames.names():
            stem, _, suffix = name.partition(".")
            if name.endswith(".tmp") or (suffix == "png" and stem.isdigit() and int(stem) >= k):
                self._frames.unlink(name)

    def partial_for(self, output: str | os.PathLike[str]) -> Path:
        """Where `output` (the job's output or one of its `extra`) is written until the job completes."""
        return self.partial if Path(output) == self.output else self.extra[Path(output)]

    def finish(self) -> Path:
        """The job is complete: the partial outputs become the outputs, and the state goes."""
        assert self._state is not None
        for output, partial in self.extra.items():
            self._state.move_out(partial.name, output)
        self._state.move_out(self.partial.name, self.output)
        self.discard()
        return self.output

    def discard(self) -> None:
        """Remove the state (a finished job, or an input that cannot make a job)."""
        if self._state is not None:
            self._state.remove_all()
        self.close()

    def close(self) -> None:
        """Stop keeping frames and release the lock (the state stays for a rerun); the folders are closed once
        no frame is being written."""
        with self._keeping:
            self._stopped = True
            if self._lock is not None:
                os.close(self._lock)  # the flock goes with it
                self._lock = None
            if not self._writing:
                self._release()

    def _release(self) -> None:
        """Close the folders (with `_keeping` held, no frame being written)."""
        for folder in (self._frames, self._state):
            if folder is not None:
                folder.close()
        self._frames = self._state = None
