"""Missing-annotation worklists over the API: per feature and per GO term, JSON and CSV."""

from __future__ import annotations

import csv
import io
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response

from app import queries
from app.deps import SessionDep
from app.queries import FeatureWorklist, GoWorklist, NotFound, TermWorklist
from app.routes.api import ERRORS

router = APIRouter(prefix="/api/v1", tags=["api"])

FeatureId = Annotated[int, Path(ge=1, le=2**31 - 1)]
GoId = Annotated[str, Path(pattern=r"^GO:\d{7}$", examples=["GO:0003677"])]
Limit = Annotated[int | None, Query(ge=1, le=1000, description="candidates per list (all: omit)")]
CSV_RESPONSE = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}, **ERRORS}


def _csv(lists: list[TermWorklist], filename: str) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(queries.CSV_COLUMNS)
    writer.writerows(queries.csv_rows(lists))
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(buffer.getvalue(), media_type="text/csv", headers=headers)


@router.get(
    "/features/{feature_id}/worklist",
    response_model=FeatureWorklist,
    responses=ERRORS,
    summary="Proteins the feature's GO hits propose for terms they lacked in 2014, checked in 2022",
)
def feature_worklist(
    session: SessionDep, feature_id: FeatureId, limit: Limit = None
) -> FeatureWorklist:
    try:
        return queries.feature_worklist(session, feature_id, limit)
    except NotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


@router.get(
    "/features/{feature_id}/worklist.csv",
    responses=CSV_RESPONSE,
    response_class=Response,
    summary="The feature's worklist, one candidate per row, CSV",
)
def feature_worklist_csv(session: SessionDep, feature_id: FeatureId) -> Response:
    try:
        found = queries.feature_worklist(session, feature_id)
    except NotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return _csv(found.lists, f"feature-{feature_id}-worklist.csv")


@router.get(
    "/go/{go_id}/worklist",
    response_model=GoWorklist,
    responses=ERRORS,
    summary="Every feature's worklist for one GO term",
)
def go_worklist(session: SessionDep, go_id: GoId, limit: Limit = None) -> GoWorklist:
    try:
        return queries.go_worklist(session, go_id, limit)
    except NotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


@router.get(
    "/go/{go_id}/worklist.csv",
    responses=CSV_RESPONSE,
    response_class=Response,
    summary="Every feature's worklist for one GO term, CSV",
)
def go_worklist_csv(session: SessionDep, go_id: GoId) -> Response:
    try:
        found = queries.go_worklist(session, go_id)
    except NotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return _csv(found.lists, f"{go_id.replace(':', '_')}-worklist.csv")
