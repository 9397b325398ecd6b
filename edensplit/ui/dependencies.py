"""What the page's routes depend on: its settings and job store, and the servers' access rules (Host without a
key, Origin, the bearer key), the page id, a job by id or by its link's token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.auth import Access
from edensplit.servers.ids import check_id
from edensplit.servers.pipeline import check_host, printable
from edensplit.settings import UiSettings
from edensplit.ui.jobs import Job, Jobs


def jobs_of(request: Request) -> Jobs:
    """The process's uploads and jobs."""
    return request.app.state.jobs


def settings_of(request: Request) -> UiSettings:
    """The page's settings."""
    return request.app.state.settings


def access_of(request: Request) -> Access:
    """Who may use the page: the servers' Access (EDENSPLIT_API_KEY)."""
    return request.app.state.access


def own_origin(request: Request) -> str:
    """The page's own origin, as a browser on it names it."""
    return f"{request.url.scheme}://{request.headers.get('host', '')}".lower()


def admitted(request: Request) -> None:
    """The servers' rules before anything else: without a key, requests to an IP address, localhost or an
    ALLOWED_HOSTS name only (INVALID_HOST: DNS rebinding needs a name); a request from another web page (its
    Origin) only when ALLOWED_ORIGINS lists it (FORBIDDEN_ORIGIN: no other site drives this page's API)."""
    if not access_of(request).enabled:
        check_host(request.headers.get("host", ""), request.app.state.allowed_hosts)
    origin = request.headers.get("origin")
    if origin is not None and origin.rstrip("/").lower() not in {own_origin(request), *request.app.state.origins}:
        raise EdenError(f"requests from the web page at {printable(origin)[:80]!r} are refused (ALLOWED_ORIGINS "
                        "lists the other origins allowed)", code=ErrorCode.FORBIDDEN_ORIGIN)


def keyed(request: Request) -> None:
    """With EDENSPLIT_API_KEY, `Authorization: Bearer <key>` (UNAUTHORIZED otherwise), as on the servers."""
    access_of(request).client(request.url.path, request.headers.get("authorization"))


def page_id(x_page_id: Annotated[str, Header(description="the page's own random id: one job at a time each")]
            ) -> str:
    """The calling page's id."""
    return check_id(x_page_id, "X-Page-ID")


def job_by_id(job_id: str, jobs: Annotated[Jobs, Depends(jobs_of)]) -> Job:
    """A job, for a caller with the key."""
    return jobs.get(job_id)


def job_by_token(job_id: str, token: Annotated[str, Query(description="the job's link token (its status gives "
                                                                      "it)")],
                 jobs: Annotated[Jobs, Depends(jobs_of)]) -> Job:
    """A job, for a link (an image, a download) that cannot carry the key: the job's own token stands for it."""
    return jobs.get(job_id, token)
