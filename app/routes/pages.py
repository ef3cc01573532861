"""HTML pages of the explorer (server-rendered; htmx enhances, plain links still work)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app import queries
from app.deps import SessionDep
from app.templating import templates

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep) -> Response:
    runs = queries.published_runs(session)
    return templates.TemplateResponse(request, "home.html", {"runs": runs})
