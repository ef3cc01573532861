"""HTML pages of the explorer (server-rendered; htmx enhances, plain links still work).

Routes stay thin: parse parameters, call the query layer, render. An htmx request for the feature
list or the protein page's paint panel gets only the named block of the same template.
"""

from __future__ import annotations

import heapq
from typing import Annotated, Any
from urllib.parse import urlencode

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from app import queries, render
from app.deps import HtmxDep, SessionDep
from app.params import IdPath, OptionalIdQuery
from app.queries import BadCursor, NotFound
from app.queries.models import (
    FeatureFilters,
    ProteinDetail,
    ProteinFeatureOut,
    SortKey,
    SortOrder,
)
from app.structure_coverage import coverage
from app.structure_files import structure_response
from app.templating import templates

router = APIRouter(include_in_schema=False)
WORKLIST_TABLES = 3  # worklists a page shows as tables of candidates; the rest, one row each
render.register(templates.env.globals)

SORT_LABELS: dict[str, str] = {
    "index": "Index", "density": "Density", "max_activation": "Max activation",
    "explanation_score": "Explanation score", "n_go_hits": "GO hits",
    "n_go_hits_length": "GO hits, length-adjusted",
}  # fmt: skip


def _error(request: Request, status: int, message: str) -> Response:
    return templates.TemplateResponse(
        request, "error.html", {"status": status, "message": message}, status_code=status
    )


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep) -> Response:
    runs = queries.published_runs(session)
    mapped = queries.mapped_sae_ids(session, [sae.id for run in runs for sae in run.saes])
    return templates.TemplateResponse(request, "home.html", {"runs": runs, "mapped": mapped})


def _number(raw: str | None) -> float | None:
    """Form fields arrive as strings, empty when unset; a non-number is ignored, not a 500."""
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _plain(value: float | None) -> float | int | None:
    """1.0 written 1 in URLs and form fields, other values exactly."""
    return int(value) if value is not None and value.is_integer() else value


def _fraction(percent: float | None) -> float | None:
    return None if percent is None else percent / 100


def _flag(raw: str | None) -> bool | None:
    return {"true": True, "false": False}.get((raw or "").lower())


@router.get("/saes/{sae_id}/features", response_class=HTMLResponse)
def feature_list(
    request: Request,
    session: SessionDep,
    htmx: HtmxDep,
    sae_id: IdPath,
    q: Annotated[str | None, Query(max_length=200)] = None,
    density_min_pct: str | None = None,
    density_max_pct: str | None = None,
    max_activation_min: str | None = None,
    max_activation_max: str | None = None,
    score_min: str | None = None,
    has_go: str | None = None,
    has_go_length: str | None = None,
    has_domain: str | None = None,
    dead: str | None = None,
    sort: SortKey = "index",
    order: SortOrder = "asc",
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    # The table shows density in percent, so the page's density filter takes percent too (the
    # API's density_min/density_max stay fractions, as the stored column).
    pct_min, pct_max = _number(density_min_pct), _number(density_max_pct)
    filters = FeatureFilters(
        q=q or None, density_min=_fraction(pct_min), density_max=_fraction(pct_max),
        max_activation_min=_number(max_activation_min),
        max_activation_max=_number(max_activation_max), score_min=_number(score_min),
        has_go=_flag(has_go), has_go_length=_flag(has_go_length),
        has_domain=_flag(has_domain), dead=_flag(dead),
    )  # fmt: skip
    try:
        sae = queries.sae_detail(session, sae_id)
        page = queries.list_features(session, sae_id, filters, sort, order, cursor)
    except NotFound as exc:
        return _error(request, 404, str(exc))
    except BadCursor as exc:
        return _error(request, 422, str(exc))
    shown = filters.model_dump(exclude={"density_min", "density_max"})
    shown |= {"density_min_pct": _plain(pct_min), "density_max_pct": _plain(pct_max)}
    params: dict[str, Any] = {k: v for k, v in shown.items() if v is not None}
    params = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in params.items()}
    base = f"/saes/{sae_id}/features"
    state = {**params, "sort": sort, "order": order}
    next_url = (
        f"{base}?{urlencode({**state, 'cursor': page.next_cursor})}" if page.next_cursor else None
    )
    context: dict[str, Any] = {
        "sae": sae, "page": page, "filters": filters, "sort": sort, "order": order,
        "sort_labels": SORT_LABELS, "next_url": next_url, "first_url": f"{base}?{urlencode(state)}",
        "is_later_page": bool(cursor), "base": base, "params": params,
    }  # fmt: skip
    block = "results" if htmx else None
    if block is None:  # the whole page: the dictionary's GO length caution under its title
        context["go_control"] = queries.go_length_control(session, sae_id)
        context["has_map"] = sae.has_map
    return templates.TemplateResponse(request, "features.html", context, block_name=block)


@router.get("/saes/{sae_id}/map", response_class=HTMLResponse)
def feature_map_page(
    request: Request, session: SessionDep, sae_id: IdPath, feature: OptionalIdQuery = None
) -> Response:
    """The map canvas; its points come from ``/api/v1/saes/{id}/map`` (drawn by feature_map.js).
    ``feature``: a feature of this dictionary to ring and label on arrival."""
    try:
        sae = queries.sae_detail(session, sae_id)
        n_mapped = queries.feature_map_size(session, sae_id)
    except NotFound as exc:
        return _error(request, 404, str(exc))
    context = {"sae": sae, "n_mapped": n_mapped, "highlight": feature}
    return templates.TemplateResponse(request, "feature_map.html", context)


@router.get("/features/{feature_id}", response_class=HTMLResponse)
def feature_page(request: Request, session: SessionDep, feature_id: IdPath) -> Response:
    try:
        detail = queries.feature_detail(session, feature_id)
    except NotFound as exc:
        return _error(request, 404, str(exc))
    groups = queries.top_examples_by_bin(detail.top_examples)
    worklist = queries.feature_worklist(session, feature_id, limit=10)
    context = {"d": detail, "groups": groups, "top_positions": top_positions, "wl": worklist,
               "wl_tables": WORKLIST_TABLES}  # fmt: skip
    return templates.TemplateResponse(request, "feature.html", context)


def top_positions(values: list[float], n: int = 5) -> list[int]:
    """The ``n`` sequence positions with the highest positive values (drawn as sticks); ties go
    to the earlier position."""
    ranked = heapq.nlargest(n, range(len(values)), key=values.__getitem__)
    return [i for i in ranked if values[i] > 0]


@router.get("/proteins/{accession}", response_class=HTMLResponse)
def protein_page(
    request: Request,
    session: SessionDep,
    htmx: HtmxDep,
    accession: str,
    feature: OptionalIdQuery = None,
) -> Response:
    try:
        detail = queries.protein_detail(session, accession)
    except NotFound as exc:
        return _error(request, 404, str(exc))
    choices = [pf for group in detail.top_features for pf in group.features]
    chosen = next(
        (pf for pf in choices if pf.feature.id == feature), choices[0] if choices else None
    )
    scale = max((abs(v) for v in chosen.values), default=0.0) if chosen else 0.0
    if (
        chosen is not None
        and chosen.feature.max_activation > 0
        and all(v >= 0 for v in chosen.values)
    ):
        scale = chosen.feature.max_activation
    context = {"d": detail, "chosen": chosen, "scale": scale or 1.0, "top_positions": top_positions,
               "paint_coverage": _paint_coverage(detail, chosen)}  # fmt: skip
    block = "paint" if htmx else None
    return templates.TemplateResponse(request, "protein.html", context, block_name=block)


def _paint_coverage(detail: ProteinDetail, chosen: ProteinFeatureOut | None) -> str | None:
    """What the page's 3D view (its first chain) shows of the painted feature, in words."""
    if chosen is None or not detail.structures or not chosen.values:
        return None
    chain = detail.structures[0]
    found = coverage(chosen.values, chain.sequence_positions)
    peak = int(np.argmax(chosen.values))
    label = f"{detail.sequence[peak]}{peak + 1}" if peak < len(detail.sequence) else None
    return render.coverage_note(chain.covered_ranges, detail.protein.length,
                                found.activation_share, label, found.peak_covered)  # fmt: skip


@router.get("/go/{go_id}", response_class=HTMLResponse)
def go_page(request: Request, session: SessionDep, go_id: str) -> Response:
    try:
        detail = queries.go_term_detail(session, go_id)
    except NotFound as exc:
        return _error(request, 404, str(exc))
    worklist = queries.go_worklist(session, detail.term.id, limit=10, detailed=WORKLIST_TABLES)
    context = {"d": detail, "wl": worklist, "wl_tables": WORKLIST_TABLES}
    return templates.TemplateResponse(request, "go.html", context)


@router.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request,
    session: SessionDep,
    htmx: HtmxDep,
    q: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    results = queries.search(session, q) if q.strip() else None
    block = "results" if htmx else None
    return templates.TemplateResponse(
        request, "search.html", {"q": q, "results": results}, block_name=block
    )


def _structure_text(session: SessionDep, structure_id: int, fmt: str) -> Response:
    return structure_response(queries.stored_structure(session, structure_id), structure_id, fmt)


@router.get("/structures/{structure_id}.pdb")
def structure_pdb(session: SessionDep, structure_id: IdPath) -> Response:
    return _structure_text(session, structure_id, "pdb")


@router.get("/structures/{structure_id}.cif")
def structure_cif(session: SessionDep, structure_id: IdPath) -> Response:
    return _structure_text(session, structure_id, "mmcif")
