"""The page's uploads and jobs: files in a private temporary folder, jobs run by the command line's own code.

- An upload is one file, streamed into a folder of its own (under the process's private folder, mode 0700),
  bounded by UI_MAX_UPLOAD_MB; at most UI_MAX_UPLOADS are kept at once.
- A job is `edensplit interpolate`'s options parsed by its own parser, checked by its own `check`, run on the
  backend its `open_backend_for` opens (the servers, after the fail-fast preflight, or `--local`) with the
  JobSpec its `spec_for` makes, plus a `watch` that counts the frames, keeps the latest generated one for the
  preview and stops the job when it is cancelled: its output equals the command line's for the same options.
- One job at a time per page (its id); several pages never share a file: each job has a folder of its own.
- An upload and a job's files are removed when the result is downloaded, when the job is cancelled or fails, and
  UI_UPLOAD_TTL_S after their last use otherwise; everything when the process stops.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edensplit.errors import EdenError, ErrorCode
from edensplit.settings import UiSettings

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


class Cancelled(EdenError):
    """The page cancelled its job."""

    code = ErrorCode.CANCELLED


@dataclass
class Upload:
    """One uploaded file, in a folder of its own."""

    id: str
    path: Path
    size: int
    touched: float = field(default_factory=time.monotonic)
    in_use: bool = False


@dataclass
class Job:
    """One job: its page, its folder, how far it got, the latest generated frame, and how it ended."""

    id: str
    page: str
    folder: Path
    uploads: list[Upload]
    multi: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # for the links a page cannot add a key to
    state: str = RUNNING
    done: int = 0
    total: int | None = None
    generated: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    touched: float = field(default_factory=time.monotonic)
    latest: np.ndarray | None = None
    result: Path | None = None
    error: str | None = None
    messages: list[str] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def status(self) -> dict[str, Any]:
        """What the page shows: frames done of the total, the rate, the time left, and the links."""
        elapsed = (self.ended or time.monotonic()) - self.started
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
        left = (self.total - self.done) / rate if rate and self.total and self.state == RUNNING else None
        base = f"/api/jobs/{self.id}"
        return {"id": self.id, "state": self.state, "done": self.done, "total": self.total, "multi": self.multi,
                "frames_per_s": round(rate, 2), "seconds_left": None if left is None else round(left, 1),
                "elapsed_s": round(elapsed, 2), "generated": self.generated,
                "preview": f"{base}/preview.png?token={self.token}&n={self.generated}" if self.generated else None,
                "result": f"{base}/result?token={self.token}" if self.state == DONE else None,
                "filename": self.result.name if self.result is not None else None,
                "error": self.error, "messages": self.messages[-3:]}


def safe_name(name: str) -> str:
    """An uploaded file's name as a plain file name of ours (its suffix kept: it says what the file is)."""
    name = SAFE_NAME.sub("_", Path(name or "upload").name).strip("._") or "upload"
    return name[-100:]


class Jobs:
    """Every upload and job of this process, under one private temporary folder."""

    def __init__(self, settings: UiSettings, local: bool, options: list[str]):
        self.settings, self.local, self.options = settings, local, options
        self.root = Path(tempfile.mkdtemp(prefix="edensplit-ui-"))  # mode 0700: this user's only
        self.uploads: dict[str, Upload] = {}
        self.jobs: dict[str, Job] = {}
        self.lock = threading.RLock()
        self._local: tuple[Any, str, dict[str, Any]] | None = None  # --local: one model for every job

    # -- uploads --------------------------------------------------------------------------------------

    def new_upload(self, name: str) -> Upload:
        """A place for one more upload (OVERLOADED when UI_MAX_UPLOADS are kept)."""
        with self.lock:
            if len(self.uploads) >= self.settings.ui_max_uploads:
                raise EdenError(f"{len(self.uploads)} uploads are kept (UI_MAX_UPLOADS); download or cancel a job, "
                                "or wait for the old ones to expire", code=ErrorCode.OVERLOADED,
                                details={"retry_after_s": 30})
            upload_id = uuid.uuid4().hex
            folder = self.root / "uploads" / upload_id
            folder.mkdir(parents=True, mode=0o700)
            upload = self.uploads[upload_id] = Upload(upload_id, folder / safe_name(name), 0)
            return upload

    def drop_upload(self, upload: Upload) -> None:
        """Remove an upload and its folder."""
        with self.lock:
            self.uploads.pop(upload.id, None)
        shutil.rmtree(upload.path.parent, ignore_errors=True)

    def take_uploads(self, ids: list[str]) -> list[Upload]:
        """The uploads a job is made of (NOT_FOUND for an unknown one, INVALID_PARAMETER for one in use)."""
        with self.lock:
            found = []
            for upload_id in ids:
                upload = self.uploads.get(upload_id)
                if upload is None:
                    raise EdenError(f"no upload {upload_id!r} (expired, used or never made)",
                                    code=ErrorCode.NOT_FOUND)
                if upload.in_use:
                    raise EdenError(f"upload {upload_id} is another job's", code=ErrorCode.INVALID_PARAMETER)
                found.append(upload)
            for upload in found:
                upload.in_use = True
            return found

    # -- jobs -----------------------------------------------------------------------------------------

    def arguments(self, uploads: list[Upload], multi: int, out: Path) -> list[str]:
        """`edensplit interpolate`'s arguments for this job: the same options a person would type."""
        suffixes = [upload.path.suffix.lower() for upload in uploads]
        if len(uploads) == 1 and suffixes[0] in VIDEO_SUFFIXES:
            source = ["--video_path", str(uploads[0].path), "--multi", str(multi)]
        elif len(uploads) == 2 and all(s in IMAGE_SUFFIXES for s in suffixes):
            if multi != 2:
                raise EdenError("a frame pair gives its one middle frame: choose 2x", code=ErrorCode.INVALID_PARAMETER)
            source = ["--frame_0_path", str(uploads[0].path), "--frame_1_path", str(uploads[1].path)]
        else:
            raise EdenError(f"give one video ({', '.join(VIDEO_SUFFIXES)}) or two frames "
                            f"({', '.join(IMAGE_SUFFIXES)}), not {len(uploads)} file(s) named "
                            f"{', '.join(u.path.name for u in uploads)}", code=ErrorCode.INVALID_PARAMETER)
        return ["interpolate", *source, "--output_dir", str(out), "--no_progress",
                *(["--local"] if self.local else []), *self.options]

    def start(self, page: str, upload_ids: list[str], multi: int) -> Job:
        """Start a job for `page` (one at a time: IDEMPOTENCY_CONFLICT, 409, while its last one runs)."""
        if multi not in (2, 4, 8):
            raise EdenError(f"the multiplier must be 2, 4 or 8, got {multi}", code=ErrorCode.INVALID_PARAMETER)
        job_id = uuid.uuid4().hex
        folder = self.root / "jobs" / job_id
        with self.lock:  # the check and the record at once: two requests of one page start one job
            if any(j.page == page and j.state == RUNNING for j in self.jobs.values()):
                raise EdenError("this page is running a job: cancel it or wait for it to finish",
                                code=ErrorCode.IDEMPOTENCY_CONFLICT)
            uploads = self.take_uploads(upload_ids)
            try:
                folder.mkdir(parents=True, mode=0o700)
                argv = self.arguments(uploads, multi, folder / "out")
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                for upload in uploads:
                    upload.in_use = False
                raise
            job = self.jobs[job_id] = Job(job_id, page, folder, uploads, multi)
        job.thread = threading.Thread(target=self._run, args=(job, argv), name=f"ui-job-{job_id[:8]}", daemon=True)
        job.thread.start()
        return job

    def backend(self, args: argparse.Namespace) -> tuple[Any, str, dict[str, Any], Callable[[], None]]:
        """The job's backend (the command line's), and what closes it: `--local` keeps one model for every job."""
        from edensplit.commands.interpolate import open_backend_for

        if not self.local:
            backend, where, fingerprint = open_backend_for(args)
            return backend, where, fingerprint, backend.close
        with self.lock:
            if self._local is None:
                self._local = open_backend_for(args)
        backend, where, fingerprint = self._local
        return backend, where, fingerprint, lambda: None

    def _run(self, job: Job, argv: list[str]) -> None:
        """The job, as `edensplit interpolate` runs it, watched."""
        from edensplit.cli import build_parser
        from edensplit.client.jobs import interpolate_pair_files, interpolate_video
        from edensplit.commands.interpolate import check, spec_for
        from edensplit.video.images import read_png

        def watch(done: int, total: int | None, frame: np.ndarray, generated: bool) -> None:
            if job.cancel.is_set():
                raise Cancelled("cancelled")
            job.done, job.total = done, total
            if generated:
                job.latest, job.generated = frame, job.generated + 1

        close: Callable[[], None] = lambda: None  # noqa: E731
        try:
            args = build_parser().parse_args(argv)
            check(args)
            backend, _, fingerprint, close = self.backend(args)
            if args.video_path:
                spec = spec_for(args, fingerprint, watch=watch, say=job.messages.append)
                result = interpolate_video(backend, args.video_path, args.output_dir, spec)
            else:
                result = interpolate_pair_files(backend, args.frame_0_path, args.frame_1_path, args.output_dir,
                                                seed=args.seed)
                job.latest, job.generated, job.done, job.total = read_png(result.output), 1, 3, 3
            job.result, job.state = result.output, DONE
        except Cancelled:
            job.state = CANCELLED
        except EdenError as exc:
            job.state, job.error = FAILED, exc.message
        except Exception as exc:  # a fault: said on the page, the process stays up
            job.state, job.error = FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                close()
            job.ended = job.touched = time.monotonic()
            if job.state != DONE:
                self.remove(job)  # nothing of a cancelled or failed job is kept: its upload, its partial files

    def get(self, job_id: str, token: str | None = None) -> Job:
        """A job by id (NOT_FOUND unless it is there, and, with a `token`, unless it is the job's)."""
        job = self.jobs.get(job_id)
        if job is None or (token is not None and token != job.token):
            raise EdenError(f"no job {job_id!r} (expired, downloaded or never made)", code=ErrorCode.NOT_FOUND)
        job.touched = time.monotonic()
        return job

    def cancel(self, job: Job, wait_s: float = 30.0) -> None:
        """Stop a running job at its next frame; its files are removed when it has stopped."""
        job.cancel.set()
        if job.thread is not None:
            job.thread.join(wait_s)

    def remove(self, job: Job, keep_record: bool = True) -> None:
        """Remove a job's files and its uploads (the record stays, for the page to read how it ended)."""
        shutil.rmtree(job.folder, ignore_errors=True)
        for upload in job.uploads:
            self.drop_upload(upload)
        if not keep_record:
            with self.lock:
                self.jobs.pop(job.id, None)

    def sweep(self, now: float | None = None) -> int:
        """Remove what was not used for UI_UPLOAD_TTL_S (uploads no job took, jobs that ended); how many."""
        now = time.monotonic() if now is None else now
        ttl = self.settings.ui_upload_ttl_s
        with self.lock:
            uploads = [u for u in self.uploads.values() if not u.in_use and now - u.touched > ttl]
            jobs = [j for j in self.jobs.values() if j.state != RUNNING and now - j.touched > ttl]
        for upload in uploads:
            self.drop_upload(upload)
        for job in jobs:
            self.remove(job, keep_record=False)
        return len(uploads) + len(jobs)

    def close(self) -> None:
        """Cancel what runs and remove the private folder."""
        for job in list(self.jobs.values()):
            if job.state == RUNNING:
                self.cancel(job, wait_s=10.0)
        shutil.rmtree(self.root, ignore_errors=True)
