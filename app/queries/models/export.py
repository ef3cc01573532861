"""What the bulk export of one dictionary returns (``export.json``, and the CSV built from it)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.queries.models.browse import DomainHitOut, GoProtocolOut, LmEffect


class GoHitOut(BaseModel):
    protocol: str  # strict (ours) | paper (the seed paper's); see SaeExport.go_protocols
    go_id: str
    name: str
    namespace: str
    p_value: float  # one-sided under strict, two-sided under paper
    q_value: float | None  # BH over all tests of the dictionary (strict); null under paper
    p_bonferroni: float  # within the feature: the namespace's terms (strict), every BP term (paper)
    depleted: bool  # fold < 1: a hit only under paper, which tests both directions
    q_length: float | None  # length-stratified BH; null for runs published before that test
    length_explained: bool | None  # q_length >= the dictionary's go_alpha; null without q_length
    fold_enrichment: float
    study_hits: int
    study_size: int


class FeatureExport(BaseModel):
    index: int
    feature_id: int
    label: str | None
    label_source: str | None
    explanation: str | None
    explanation_model: str | None
    explanation_score: float | None
    density: float
    n_active: int
    max_activation: float
    mean_activation: float
    is_dead: bool
    pattern_class: str | None
    n_go_hits_length: int | None
    go_hits: list[GoHitOut]  # strict protocol
    n_go_hits_paper: int | None  # null: the paper protocol was not run for this dictionary
    go_hits_paper: list[GoHitOut]
    aa_top: str | None = Field(description="Residue type carrying most of the activation mass")
    aa_top_share: float | None
    aa_detector: bool | None = Field(description="A single-type detector")
    aa_n_residues: int | None = Field(description="Residues the profile is computed over")
    aa_profile: dict[str, float] | None = Field(
        description="Share of the activation mass per residue type (one-letter code; X: "
        "non-standard); null for runs published before amino-acid profiles"
    )
    lm_effect: LmEffect | None  # what it makes the model predict, by intervention
    top_domain: str | None = Field(
        description="The Pfam / PROSITE family beyond length with the lowest length-adjusted q"
    )
    top_domain_source: str | None
    n_domain_hits: int | None = Field(description="Families with q < alpha; null: not run")
    n_domain_hits_length: int | None = Field(description="Of those, beyond protein length")
    domain_hits: list[DomainHitOut] = Field(description="Family hits, both protocols")


class SaeExport(BaseModel):
    sae_id: int
    sae_name: str
    kind: str
    level: str
    layer: int
    n_latents: int
    run_name: str
    base_model: str
    checkpoint_sha256: str
    go_alpha: float  # significance level of the dictionary's GO stage (its length verdicts)
    go_protocols: list[GoProtocolOut]  # each protocol's statement and settings
    is_control: bool = Field(description="A control dictionary (trained on a random-init model)")
    aa_profile_basis: str | None = Field(
        description="What the amino-acid profiles are computed on: corpus (every residue a "
        "residue-level feature fires on) or examples (positive per-residue attribution over a "
        "protein-level feature's example proteins)"
    )
    features: list[FeatureExport]
