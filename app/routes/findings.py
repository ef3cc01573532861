"""The Findings page of a run (figures) and the Concept pages (best-aligned features)."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from app.deps import SessionDep, SettingsDep
from app.findings.concepts import (
    ConceptExample,
    concept_alignments,
    concept_by_name,
    concept_example,
    concept_index,
    track_rows,
)
from app.findings.data import published_run
from app.findings.render import cached_findings
from app.params import IdPath
from app.store.schema import Feature, Run
from app.templating import templates
from app.worklist_queries import worklist_summaries

router = APIRouter(include_in_schema=False)


@router.get("/findings")
def latest_findings(session: SessionDep) -> Response:
    """The newest published run's Findings page."""
    run_id = session.scalars(
        select(Run.id)
        .where(Run.status == "published")
        .order_by(Run.published_at.desc(), Run.id.desc())
        .limit(1)
    ).first()
    if run_id is None:
        raise HTTPException(404, "the store holds no published run")
    return RedirectResponse(f"/runs/{run_id}/findings", status_code=303)


@router.get("/runs/{run_id}/findings", response_class=HTMLResponse)
def findings_page(
    request: Request, run_id: IdPath, session: SessionDep, settings: SettingsDep
) -> Response:
    t0 = time.perf_counter()
    run = published_run(session, run_id)
    if run is None:
        raise HTTPException(404, f"no published run {run_id}")
    rendered = cached_findings(session, settings.sqlalchemy_url, run)
    worklists = worklist_summaries(session, [s.id for s in run.saes])
    context = {"run": run, "rendered": rendered, "saes": run.saes, "worklists": worklists}
    response = templates.TemplateResponse(request, "findings.html", context)
    response.headers["Server-Timing"] = f"page;dur={1000 * (time.perf_counter() - t0):.1f}"
    return response


@router.get("/runs/{run_id}/findings/{key}.svg")
def findings_svg(run_id: IdPath, key: str, session: SessionDep, settings: SettingsDep) -> Response:
    run = published_run(session, run_id)
    if run is None:
        raise HTTPException(404, f"no published run {run_id}")
    for fig in cached_findings(session, settings.sqlalchemy_url, run).figures:
        if fig.key == key:
            return Response(fig.svg, media_type="image/svg+xml")
    raise HTTPException(404, f"run {run_id} has no figure {key!r}")


@router.get("/concepts", response_class=HTMLResponse)
def concepts_index(request: Request, session: SessionDep) -> Response:
    rows = concept_index(session)
    return templates.TemplateResponse(request, "concept.html", {"concepts": rows, "concept": None})


@router.get("/concepts/{name}", response_class=HTMLResponse)
def concept_page(
    request: Request, name: str, session: SessionDep, settings: SettingsDep
) -> Response:
    t0 = time.perf_counter()
    concept = concept_by_name(session, name)
    if concept is None:
        raise HTTPException(404, f"no concept {name!r}")
    dictionaries = concept_alignments(session, concept)
    label_file = settings.shared_dir / "data" / "residue_annotations" / f"{name}.tsv.gz"
    examples: list[tuple[str, ConceptExample, float, list[object]]] = []
    for d in dictionaries:
        best = d.best
        if best is None:
            continue
        ex = concept_example(session, label_file, best.feature_id)
        if ex is None:
            continue
        scale = session.get(Feature, best.feature_id).max_activation or 1.0  # type: ignore[union-attr]
        examples.append((d.sae.name, ex, best.threshold * scale, list(track_rows(ex, scale))))
    response = templates.TemplateResponse(
        request,
        "concept.html",
        {
            "concept": concept,
            "dictionaries": dictionaries,
            "examples": examples,
            "label_file": label_file.name,
        },
    )
    response.headers["Server-Timing"] = f"page;dur={1000 * (time.perf_counter() - t0):.1f}"
    return response
