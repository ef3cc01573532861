"""What the query layer returns: Pydantic models shared by the JSON API and the HTML pages.

The API declares them as response models (so the OpenAPI schema is exact) and the templates render
the very same objects, so a page and its API answer can never disagree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SortKey = Literal[
    "index", "density", "max_activation", "explanation_score", "n_go_hits", "n_go_hits_length"
]
SortOrder = Literal["asc", "desc"]


class _Orm(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class SaeSummary(_Orm):
    id: int
    run_id: int
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
    control_of: str | None
    fve: float | None
    mse: float | None
    l0: float | None
    dead_fraction: float | None
    loss_recovered: float | None


class SaeDetail(SaeSummary):
    run_name: str
    base_model: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    n_features: int
    # Whether ``/api/v1/saes/{id}/map`` has coordinates (not for neuron baselines, nor for runs
    # analysed without maps): a script checks here instead of handling the map's 404.
    has_map: bool


class RunOut(_Orm):
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
    saes: list[SaeSummary]


class FeatureSummary(_Orm):
    id: int
    sae_id: int
    index: int
    density: float = Field(description="Fraction of proteins (or residues) on which it is active")
    n_active: int
    max_activation: float
    mean_activation: float
    is_dead: bool
    pattern_class: str | None
    auto_label: str | None
    auto_label_source: str | None
    explanation_score: float | None
    n_go_hits: int
    n_go_hits_length: int | None = Field(
        description="GO terms significant by the length-stratified test (BH), which protein "
        "length cannot explain; null for runs published before that test"
    )
    hist_edges: list[float]
    hist_counts: list[int]
    map_x: float | None = Field(
        default=None,
        description="Position on the dictionary's feature map (UMAP of decoder directions, in "
        "[0, 1]); null off the map: dead latents, the neuron baseline, runs published before it",
    )
    map_y: float | None = None


class FeatureMap(BaseModel):
    """Every mapped feature of a dictionary, column by column (one entry per feature, in index
    order): compact for dictionaries of tens of thousands of latents."""

    sae_id: int
    sae_name: str
    level: str
    n_latents: int
    method: str = Field(description="How the map was made")
    feature_id: list[int]
    index: list[int]
    x: list[float]
    y: list[float]
    density: list[float]
    label: list[str | None]
    explanation_score: list[float | None]
    n_go_hits: list[int]
    n_go_hits_length: list[int | None]


class FeatureFilters(BaseModel):
    """Filters of the feature list (every bound optional)."""

    q: str | None = None
    density_min: float | None = None
    density_max: float | None = None
    max_activation_min: float | None = None
    max_activation_max: float | None = None
    score_min: float | None = None
    has_go: bool | None = None
    has_go_length: bool | None = None  # a term significant within protein-length strata
    dead: bool | None = None


class FeaturePage(BaseModel):
    items: list[FeatureSummary]
    total: int = Field(description="Features matching the filters, over all pages")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")
    sort: SortKey
    order: SortOrder


class ProteinRef(_Orm):
    id: int
    accession: str
    name: str | None
    gene: str | None
    organism: str | None
    length: int


class StructureOut(_Orm):
    id: int
    format: str
    chain: str
    source: str | None
    structure_type: str | None
    residue_ids: list[str] = Field(description="Author residue ids in ATOM order (e.g. '52A')")
    sequence_positions: list[int] = Field(
        description="0-based sequence position per residue, -1 none"
    )
    identity: float | None = Field(description="Identical pairs / aligned pairs")
    coverage: float | None = Field(
        description="Share of the chain's own residues aligned to the sequence (not of the "
        "protein: see covered_ranges and n_resolved)"
    )
    covered_ranges: list[tuple[int, int]] = Field(
        default_factory=list,
        description="Runs of sequence positions the chain resolves, 1-based and inclusive",
    )
    n_resolved: int | None = Field(
        default=None, description="How many of the protein's residues the chain resolves"
    )


class TopExampleOut(BaseModel):
    bin: str
    rank: int
    activation: float
    max_position: int | None
    protein: ProteinRef
    sequence: str
    values: list[float] = Field(description="Per-residue values, one per sequence position")
    structure: StructureOut | None = Field(
        description="The protein's structure chain that shows this feature best: the one "
        "resolving the peak residue, then the one holding most of its activation mass"
    )
    structure_share: float | None = Field(
        default=None,
        description="Share of the feature's activation mass on this protein (sum of positive "
        "per-residue values) on residues the structure chain resolves; null without a chain "
        "or without positive values",
    )
    structure_peak_covered: bool | None = Field(
        default=None,
        description="Whether the chain resolves the peak residue (max_position); null "
        "without a chain. When false the 3D view would show the peak nowhere",
    )


class GoHit(BaseModel):
    go_id: str
    name: str
    namespace: str
    level: int
    depth: int
    study_hits: int
    study_size: int
    pop_hits: int
    pop_size: int
    fold_enrichment: float
    odds_ratio: float | None
    p_value: float
    q_value: float
    p_bonferroni: float
    p_length: float | None = Field(
        description="The same one-sided test within protein-length strata (exact conditional, "
        "a common odds ratio of 1 across the strata); null for runs published before it"
    )
    q_length: float | None = Field(description="BH of p_length over all tests of the SAE")
    length_explained: bool | None = Field(
        description="Whether protein length explains the hit: true when q_length is at least "
        "the significance level of the dictionary's GO stage (go.alpha), false below it, null "
        "when q_length is null"
    )
    is_most_specific: bool
    method: str


class ExplanationScoreOut(_Orm):
    method: str
    value: float | None
    p_value: float | None
    n: int | None


class ExplanationOut(BaseModel):
    id: int
    text: str
    model: str
    created_at: datetime
    scores: list[ExplanationScoreOut]


class NeighborOut(BaseModel):
    feature_id: int
    sae_id: int
    index: int
    auto_label: str | None
    cosine: float


class ConceptHit(BaseModel):
    concept: str
    threshold: float
    precision: float
    recall: float
    f1: float
    site_recall: float | None
    split: str


class BaselineContext(BaseModel):
    """Where this feature's explanation score ranks among the run's neuron baseline."""

    neuron_sae_id: int
    neuron_sae_name: str
    n_scored: int = Field(description="Neuron features with a score")
    n_better: int = Field(description="Neurons whose score beats this feature's")
    percentile: float = Field(description="Share of scored neurons this feature beats or ties")


class GoLengthControl(BaseModel):
    """How often the dictionary's features get a GO hit at all, with the real annotations and
    with annotations shuffled among proteins of similar length (the GO stage's control): a
    feature that only tracks length still gets hits, because annotation counts grow with it."""

    pct_features_with_hit: float = Field(description="Real annotations, BH")
    pct_features_with_hit_shuffled: float = Field(
        description="Annotations shuffled within length bins, BH (mean over permutations)"
    )
    n_permutations: int
    alpha: float = Field(description="The GO stage's significance level")
    pct_features_with_hit_length_adjusted: float | None = Field(
        description="Real annotations, length-stratified test (BH); null before that test"
    )
    pct_features_with_hit_length_adjusted_shuffled: float | None = Field(
        description="Shuffled annotations, length-stratified test (BH)"
    )
    length_driven: bool = Field(
        description="The shuffled rate is at least half the real one: this dictionary's GO terms "
        "may reflect protein length more than function"
    )


class FeatureDetail(BaseModel):
    feature: FeatureSummary
    sae: SaeSummary
    run_name: str
    explanation: ExplanationOut | None
    go_hits: list[GoHit]
    go_control: GoLengthControl | None = Field(
        None, description="The dictionary's GO hit rate against its length control"
    )
    top_examples: list[TopExampleOut]
    neighbors: list[NeighborOut]
    concepts: list[ConceptHit]
    baseline: BaselineContext | None
    track_scale: float = Field(description="The value that maps to full colour on residue tracks")


class GoTermRef(_Orm):
    id: str
    name: str
    namespace: str
    depth: int
    level: int


class ProteinFeatureOut(BaseModel):
    rank: int
    activation: float
    feature: FeatureSummary
    values: list[float]


class ProteinSaeFeatures(BaseModel):
    sae: SaeSummary
    features: list[ProteinFeatureOut]


class ProteinDetail(BaseModel):
    protein: ProteinRef
    sequence: str
    taxon_id: int | None
    pfam: str | None
    ec: str | None
    source: str | None
    go_terms: list[GoTermRef]
    structures: list[StructureOut]
    top_features: list[ProteinSaeFeatures]


class EnrichedFeature(BaseModel):
    feature: FeatureSummary
    sae_name: str
    hit: GoHit


class GoTermDetail(BaseModel):
    term: GoTermRef
    definition: str | None
    is_obsolete: bool
    parents: list[str]
    ancestors: list[GoTermRef] = Field(
        description="All ancestors via the stored parents, nearest first"
    )
    enriched_features: list[EnrichedFeature]


class FeatureHit(BaseModel):
    feature: FeatureSummary
    sae_name: str
    snippet: str | None


class SearchResults(BaseModel):
    query: str
    features: list[FeatureHit]
    proteins: list[ProteinRef]
    go_terms: list[GoTermRef]
