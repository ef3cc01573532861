"""The versioned REST API (``/api/v1``), read half; every handler goes through the query layer.

Unknown ids answer 404 and bad parameters 422, both in the one JSON error shape of ``app.main``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from app import queries
from app.deps import SessionDep
from app.queries import CURSOR_PATTERN, BadCursor, NotFound
from app.queries.models import (
    FeatureDetail,
    FeatureFilters,
    FeatureMap,
    FeaturePage,
    GoTermDetail,
    ProteinDetail,
    RunOut,
    SaeDetail,
    SaeSummary,
    SearchResults,
    SortKey,
    SortOrder,
)

router = APIRouter(prefix="/api/v1", tags=["api"])

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown id (JSON error shape)"},
    422: {"description": "Invalid parameter (JSON error shape)"},
}


def not_found(exc: NotFound) -> HTTPException:
    return HTTPException(status_code=404, detail=str(exc))


@router.get("/runs", response_model=list[RunOut], summary="Published runs and their dictionaries")
def list_runs(session: SessionDep) -> list[RunOut]:
    return queries.run_models(session)


@router.get("/saes", response_model=list[SaeSummary], summary="Dictionaries of published runs")
def list_saes(session: SessionDep) -> list[SaeSummary]:
    return queries.list_saes(session)


@router.get("/saes/{sae_id}", response_model=SaeDetail, responses=ERRORS, summary="One dictionary")
def get_sae(session: SessionDep, sae_id: Annotated[int, Path(ge=1, le=2**31 - 1)]) -> SaeDetail:
    try:
        return queries.sae_detail(session, sae_id)
    except NotFound as exc:
        raise not_found(exc) from exc


@router.get(
    "/saes/{sae_id}/map",
    response_model=FeatureMap,
    responses=ERRORS,
    summary="The dictionary's feature map: UMAP of decoder directions, column by column",
)
def get_feature_map(
    session: SessionDep, sae_id: Annotated[int, Path(ge=1, le=2**31 - 1)]
) -> FeatureMap:
    try:
        return queries.feature_map(session, sae_id)
    except NotFound as exc:
        raise not_found(exc) from exc


FloatQ = Annotated[float | None, Query(allow_inf_nan=False)]


@router.get(
    "/saes/{sae_id}/features",
    response_model=FeaturePage,
    responses=ERRORS,
    summary="An SAE's features: filters, sorting and cursor pagination",
)
def list_features(
    session: SessionDep,
    sae_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    q: Annotated[str | None, Query(max_length=200, description="Text in label/explanation")] = None,
    density_min: FloatQ = None,
    density_max: FloatQ = None,
    max_activation_min: FloatQ = None,
    max_activation_max: FloatQ = None,
    score_min: FloatQ = None,
    has_go: bool | None = None,
    has_go_length: Annotated[
        bool | None,
        Query(description="Has a GO term significant within protein-length strata"),
    ] = None,
    has_domain: Annotated[
        bool | None,
        Query(description="Has a Pfam / PROSITE family significant beyond length (human proteins)"),
    ] = None,
    dead: bool | None = None,
    sort: SortKey = "index",
    order: SortOrder = "asc",
    cursor: Annotated[
        str | None,
        Query(
            max_length=500,
            pattern=CURSOR_PATTERN,
            description="next_cursor of the previous page: '<sort value>~<feature id>' of its "
            "last row ('null~<id>' among features without a value); the page starts after it",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> FeaturePage:
    filters = FeatureFilters(
        q=q, density_min=density_min, density_max=density_max,
        max_activation_min=max_activation_min, max_activation_max=max_activation_max,
        score_min=score_min, has_go=has_go, has_go_length=has_go_length, has_domain=has_domain,
        dead=dead,
    )  # fmt: skip
    try:
        return queries.list_features(session, sae_id, filters, sort, order, cursor, limit)
    except NotFound as exc:
        raise not_found(exc) from exc
    except BadCursor as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc


@router.get(
    "/features/{feature_id}",
    response_model=FeatureDetail,
    responses=ERRORS,
    summary="One feature: stats, explanation, scores, GO hits, top examples with residue values",
)
def get_feature(
    session: SessionDep, feature_id: Annotated[int, Path(ge=1, le=2**31 - 1)]
) -> FeatureDetail:
    try:
        return queries.feature_detail(session, feature_id)
    except NotFound as exc:
        raise not_found(exc) from exc


@router.get(
    "/proteins/{accession}",
    response_model=ProteinDetail,
    responses=ERRORS,
    summary="One protein with its GO terms, structures and top features per SAE",
)
def get_protein(
    session: SessionDep, accession: Annotated[str, Path(min_length=1, max_length=64)]
) -> ProteinDetail:
    try:
        return queries.protein_detail(session, accession)
    except NotFound as exc:
        raise not_found(exc) from exc


@router.get(
    "/go/{go_id}",
    response_model=GoTermDetail,
    responses=ERRORS,
    summary="One GO term with its ancestors and the features enriched for it",
)
def get_go_term(
    session: SessionDep,
    go_id: Annotated[str, Path(pattern=r"^GO:\d{7}$", examples=["GO:0003677"])],
) -> GoTermDetail:
    try:
        return queries.go_term_detail(session, go_id)
    except NotFound as exc:
        raise not_found(exc) from exc


@router.get(
    "/search",
    response_model=SearchResults,
    responses=ERRORS,
    summary="Search explanations/labels, GO terms (id or name) and proteins (accession or name)",
)
def search(
    session: SessionDep,
    q: Annotated[str, Query(min_length=1, max_length=200)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SearchResults:
    return queries.search(session, q, limit)
