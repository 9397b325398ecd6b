"""The page (plain HTML, a little JavaScript), its files, its health, and what it needs to know of the process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from edensplit.servers.auth import Access
from edensplit.servers.envelope import success_body
from edensplit.settings import UiSettings
from edensplit.ui.dependencies import access_of, settings_of

STATIC = Path(__file__).resolve().parents[1] / "static"
router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The page: no data in it, so it is open (its API is what the key guards)."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/app.js", include_in_schema=False)
async def script() -> FileResponse:
    """The page's script."""
    return FileResponse(STATIC / "app.js", media_type="text/javascript")


@router.get("/health/ready", summary="The page answers")
async def ready() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/api/config", summary="What the page needs before a job: whether a key is asked, the limits")
async def config(settings: Annotated[UiSettings, Depends(settings_of)],
                 access: Annotated[Access, Depends(access_of)]) -> dict[str, Any]:
    return success_body({"keyed": access.enabled, "max_upload_mb": settings.ui_max_upload_mb,
                         "multipliers": [2, 4, 8], "upload_ttl_s": settings.ui_upload_ttl_s})
