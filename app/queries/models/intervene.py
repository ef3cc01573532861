"""What the steering (``POST /api/v1/steer``) and variant (``POST /api/v1/variants``) endpoints
return."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.queries.models.encode import MatchOut


class Substitute(BaseModel):
    amino_acid: str
    delta_log_p: float
    p_after: float


class SteeredPosition(BaseModel):
    position: int = Field(description="1-based")
    residue: str
    log_p_before: list[float] = Field(description="20 values, order of `amino_acids`")
    log_p_after: list[float]
    argmax_before: str
    argmax_after: str
    top_substitutions: list[Substitute] = Field(description="Largest Δ log p first")
    feature_before: list[float] | None = Field(
        description="Residue level: each intervened feature here before, in request order"
    )
    feature_after: list[float] | None = Field(
        description="Residue level: the same features re-encoded from the steered stream"
    )


class MaskedOut(BaseModel):
    position: int
    log_p_before: list[float]
    log_p_after: list[float]


class SteerResponse(BaseModel):
    sae_id: int
    level: str
    layer: int
    sequence: str
    amino_acids: str
    steered_sequence: str = Field(description="The argmax amino acid at every position, steered")
    changed_positions: list[int] = Field(description="1-based: argmax differs from unsteered")
    pooled_before: list[float] | None = Field(description="Protein level: each feature's code")
    pooled_after: list[float] | None
    positions: list[SteeredPosition]
    masked: list[MaskedOut]
    match: MatchOut | None
    note: str
    provenance: dict[str, Any]


class SubstitutionScore(BaseModel):
    position: int
    wild_type: str
    mutant: str
    log_p_wild_type: float
    log_p_mutant: float
    score: float


class FeatureRef(BaseModel):
    index: int
    feature_id: int | None
    label: str | None


class FeatureChangeOut(FeatureRef):
    before: float
    after: float
    delta: float
    track: list[float | None] = Field(
        description="Mutant − wild type per wild-type position (null where deleted)"
    )


class VariantOut(BaseModel):
    name: str
    mutant_length: int
    score: float | None = Field(description="Σ masked-marginal log p(mut) − log p(wt)")
    score_note: str | None
    substitutions: list[SubstitutionScore]
    gained: list[FeatureRef]
    lost: list[FeatureRef]
    top_changes: list[FeatureChangeOut]


class VariantsResponse(BaseModel):
    sae_id: int
    level: str
    layer: int
    sequence: str
    variants: list[VariantOut]
    match: MatchOut | None
    note: str
    provenance: dict[str, Any]
