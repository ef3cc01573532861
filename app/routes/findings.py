"""The Findings page of a run (figures) and the Concept pages (best-aligned features)."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.deps import SessionDep
from app.findings.render import cached_findings
from app.params import IdPath
from app.queries import (
    concept_alignments,
    concept_by_name,
    concept_examples,
    concept_index,
    newest_published_run_id,
    published_run,
    worklist_summaries,
)
from app.settings import get_settings
from app.templating import templates

router = APIRouter(include_in_schema=False)


@router.get("/findings")
def latest_findings(session: SessionDep) -> Response:
    """The newest published run's Findings page."""
    run_id = newest_published_run_id(session)
    if run_id is None:
        raise HTTPException(404, "the store holds no published run")
    return RedirectResponse(f"/runs/{run_id}/findings", status_code=303)


@router.get("/runs/{run_id}/findings", response_class=HTMLResponse)
def findings_page(request: Request, run_id: IdPath, session: SessionDep) -> Response:
    t0 = time.perf_counter()
    run = published_run(session, run_id)
    if run is None:
        raise HTTPException(404, f"no published run {run_id}")
    rendered = cached_findings(session, get_settings().sqlalchemy_url, run)
    worklists = worklist_summaries(session, [s.id for s in run.saes])
    context = {"run": run, "rendered": rendered, "saes": run.saes, "worklists": worklists}
    response = templates.TemplateResponse(request, "findings.html", context)
    response.headers["Server-Timing"] = f"page;dur={1000 * (time.perf_counter() - t0):.1f}"
    return response


@router.get("/runs/{run_id}/findings/{key}.svg")
def findings_svg(run_id: IdPath, key: str, session: SessionDep) -> Response:
    run = published_run(session, run_id)
    if run is None:
        raise HTTPException(404, f"no published run {run_id}")
    for fig in cached_findings(session, get_settings().sqlalchemy_url, run).figures:
        if fig.key == key:
            return Response(fig.svg, media_type="image/svg+xml")
    raise HTTPException(404, f"run {run_id} has no figure {key!r}")


@router.get("/concepts", response_class=HTMLResponse)
def concepts_index(request: Request, session: SessionDep) -> Response:
    rows = concept_index(session)
    return templates.TemplateResponse(request, "concept.html", {"concepts": rows, "concept": None})


@router.get("/concepts/{name}", response_class=HTMLResponse)
def concept_page(request: Request, name: str, session: SessionDep) -> Response:
    t0 = time.perf_counter()
    concept = concept_by_name(session, name)
    if concept is None:
        raise HTTPException(404, f"no concept {name!r}")
    dictionaries = concept_alignments(session, concept)
    examples = concept_examples(session, concept, dictionaries)
    response = templates.TemplateResponse(
        request,
        "concept.html",
        {
            "concept": concept,
            "dictionaries": dictionaries,
            "examples": examples,
        },
    )
    response.headers["Server-Timing"] = f"page;dur={1000 * (time.perf_counter() - t0):.1f}"
    return response
