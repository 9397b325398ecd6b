"""The page's API: upload a file, start a job on uploads, follow it, cancel it, see its latest frame, download its
result. Every answer but a file is the servers' JSON envelope; every failure their error envelope."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.envelope import success_body
from edensplit.settings import UiSettings
from edensplit.ui.dependencies import job_by_id, job_by_token, jobs_of, keyed, page_id, settings_of
from edensplit.ui.jobs import DONE, RUNNING, Job, Jobs
from edensplit.wire.images import encode_png

router = APIRouter(prefix="/api")


class JobRequest(BaseModel):
    """A job: one video upload, or two frame uploads, and the multiplier."""

    uploads: list[str] = Field(min_length=1, max_length=2, description="upload ids: a video, or two frames")
    multi: int = Field(2, description="2, 4 or 8 frames per input interval")


@router.post("/uploads", dependencies=[Depends(keyed)], summary="Upload one file (the body), into a folder of "
             "its own; 413 past UI_MAX_UPLOAD_MB")
async def upload(request: Request, jobs: Annotated[Jobs, Depends(jobs_of)],
                 settings: Annotated[UiSettings, Depends(settings_of)],
                 name: Annotated[str, Query(max_length=255, description="the file's name (its suffix matters)")]
                 ) -> dict[str, Any]:
    limit = int(settings.ui_max_upload_mb * 2**20)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise EdenError(f"an upload of {declared} bytes is over UI_MAX_UPLOAD_MB ({settings.ui_max_upload_mb:g} MiB)",
                        code=ErrorCode.PAYLOAD_TOO_LARGE)
    kept = jobs.new_upload(name)
    try:
        with open(kept.path, "xb") as f:  # a local file: each chunk (64 KiB at most) is written as it comes
            async for chunk in request.stream():
                kept.size += len(chunk)
                if kept.size > limit:
                    raise EdenError(f"the upload is over UI_MAX_UPLOAD_MB ({settings.ui_max_upload_mb:g} MiB)",
                                    code=ErrorCode.PAYLOAD_TOO_LARGE)
                f.write(chunk)
    except BaseException:
        jobs.drop_upload(kept)
        raise
    if kept.size == 0:
        jobs.drop_upload(kept)
        raise EdenError("the upload is empty", code=ErrorCode.INVALID_PARAMETER)
    return success_body({"upload_id": kept.id, "bytes": kept.size, "name": kept.path.name})


@router.post("/jobs", dependencies=[Depends(keyed)], summary="Start a job on uploads (one at a time per page)")
async def start(body: JobRequest, page: Annotated[str, Depends(page_id)],
                jobs: Annotated[Jobs, Depends(jobs_of)]) -> dict[str, Any]:
    job = await run_in_threadpool(jobs.start, page, body.uploads, body.multi)
    return success_body(job.status())


@router.get("/jobs/{job_id}", dependencies=[Depends(keyed)], summary="A job's progress")
async def status(job: Annotated[Job, Depends(job_by_id)]) -> dict[str, Any]:
    return success_body(job.status())


@router.post("/jobs/{job_id}/cancel", dependencies=[Depends(keyed)],
             summary="Stop a running job; its upload and partial files are removed")
async def cancel(job: Annotated[Job, Depends(job_by_id)], jobs: Annotated[Jobs, Depends(jobs_of)]) -> dict[str, Any]:
    if job.state == RUNNING:
        await run_in_threadpool(jobs.cancel, job)
    return success_body(job.status())


@router.get("/jobs/{job_id}/preview.png", summary="The latest generated frame (the job's link token for a key)")
async def preview(job: Annotated[Job, Depends(job_by_token)]) -> Response:
    frame = job.latest
    if frame is None:
        raise EdenError("no frame generated yet", code=ErrorCode.NOT_FOUND)
    return Response(await run_in_threadpool(encode_png, frame), media_type="image/png",
                    headers={"Cache-Control": "no-store"})


@router.get("/jobs/{job_id}/result", summary="The result, once (its files are removed once it is sent)")
async def result(job: Annotated[Job, Depends(job_by_token)], jobs: Annotated[Jobs, Depends(jobs_of)]
                 ) -> FileResponse:
    if job.state != DONE or job.result is None or not job.result.is_file():
        raise EdenError(f"job {job.id} has no result ({job.state})", code=ErrorCode.NOT_FOUND)
    return FileResponse(job.result, filename=job.result.name, headers={"Cache-Control": "no-store"},
                        background=BackgroundTask(jobs.remove, job))
