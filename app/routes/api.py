"""The versioned REST API (``/api/v1``); every handler goes through ``app.queries``."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from app import queries
from app.deps import SessionDep

router = APIRouter(prefix="/api/v1", tags=["api"])


class SaeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    level: str
    layer: int
    out_layer: int | None
    d_in: int
    n_latents: int
    k: int | None
    l1_coefficient: float | None
    is_control: bool
    fve: float | None
    mse: float | None
    l0: float | None
    dead_fraction: float | None
    loss_recovered: float | None


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    base_model: str
    checkpoint_sha256: str
    layer: int
    corpus: str
    n_proteins: int
    status: str
    created_at: datetime
    published_at: datetime | None
    saes: list[SaeOut]


@router.get("/runs", response_model=list[RunOut], summary="Published runs and their dictionaries")
def list_runs(session: SessionDep) -> list[RunOut]:
    return [RunOut.model_validate(run) for run in queries.published_runs(session)]
