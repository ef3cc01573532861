"""What ``POST /api/v1/encode`` and the ``/encode`` page return (``app.client`` mirrors these)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class FeatureHit(BaseModel):
    index: int
    feature_id: int | None
    label: str | None
    explanation: str | None
    explanation_score: float | None
    density: float
    max: float
    mean: float
    n_active_residues: int
    max_position: int | None
    values: list[float] | None


class Quality(BaseModel):
    fve: float | None
    training_median_fve: float | None
    warning: str | None
    note: str | None


class StructureRef(BaseModel):
    structure_id: int
    chain: str
    format: str
    url: str
    residue_ids: list[str]
    sequence_positions: list[int]


class MatchOut(BaseModel):
    protein_id: int
    accession: str
    name: str | None
    structures: list[StructureRef]


class SequenceResult(BaseModel):
    id: str
    sequence: str
    length: int
    sha256: str
    windowed: bool
    notes: list[str]
    n_active_features: int
    n_hidden_dense: int
    features: list[FeatureHit]
    quality: Quality
    match: MatchOut | None


class EncodeResponse(BaseModel):
    sae_id: int
    level: str
    rank_by: str
    provenance: dict[str, Any]
    results: list[SequenceResult]
