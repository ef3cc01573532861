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
    n_go_hits_paper: int | None = Field(
        default=None,
        description="GO BP terms significant under the seed paper's protocol (two-sided Fisher, "
        "is_a propagation, human population, every term present, Bonferroni within the feature "
        "< 0.05; depleted terms count); null for runs published before it was computed",
    )
    hist_edges: list[float]
    hist_counts: list[int]
    map_x: float | None = Field(
        default=None,
        description="Position on the dictionary's feature map (UMAP of decoder directions, in "
        "[0, 1]); null off the map: dead latents, the neuron baseline, runs published before it",
    )
    map_y: float | None = None
    aa_top: str | None = Field(
        default=None,
        description="The residue type (one letter; X: non-standard) carrying most of the "
        "feature's activation mass; null for runs published before amino-acid profiles",
    )
    aa_top_share: float | None = Field(default=None, description="That type's share of the mass")
    aa_n_residues: int | None = Field(
        default=None, description="Residues the amino-acid profile is computed over"
    )
    aa_detector: bool | None = Field(
        default=None,
        description="A single-type detector: one residue type carries the mass "
        "(app.residue_types.is_detector)",
    )
    n_domain_hits: int | None = Field(
        default=None,
        description="Pfam / PROSITE families significant (BH q < alpha, strict protocol) among "
        "the corpus's human proteins; null for runs published without domain enrichment",
    )
    n_domain_hits_length: int | None = Field(
        default=None, description="Of those, families also significant within length strata"
    )
    top_domain: str | None = Field(
        default=None,
        description="The family beyond length with the lowest length-adjusted q (its accession)",
    )
    top_domain_source: str | None = Field(default=None, description="Pfam or PROSITE")


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
    has_domain: bool | None = None  # a Pfam / PROSITE family significant beyond length
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


class GoProtocolOut(_Orm):
    """How a dictionary's GO hits were computed: see ``statement`` and ``settings``."""

    name: str = Field(description="strict (ours) or paper (the seed paper's goatools defaults)")
    statement: str = Field(description="The protocol's settings in one sentence")
    settings: dict[str, Any] = Field(
        description="test, propagation, namespaces, population, study, terms, correction, alpha, "
        "direction, annotations"
    )
    figures: dict[str, Any] = Field(
        description="population size, terms tested, features with a hit (trainer summary)"
    )


class GoHit(BaseModel):
    protocol: str = Field(
        "strict", description="strict (ours) or paper (the seed paper's protocol exactly)"
    )
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
    p_value: float = Field(
        description="Fisher's exact test: one-sided (over-representation) under strict, "
        "two-sided under paper"
    )
    q_value: float | None = Field(
        description="BH over all tests of the dictionary (strict); null under paper"
    )
    p_bonferroni: float = Field(
        description="p x terms tested, within the feature (capped at 1): the namespace's "
        "tested terms under strict, every BP term present in the human population under paper"
    )
    depleted: bool = Field(
        False,
        description="Fewer study proteins carry the term than expected (fold < 1): "
        "a hit only under paper, which tests both directions",
    )
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


class AaShare(BaseModel):
    letter: str = Field(description="One-letter code (X: any non-standard residue)")
    name: str = Field(description="Three-letter code")
    share: float = Field(description="Share of the feature's activation mass on this type")
    background: float | None = Field(
        description="This type's share of all residues of the run's corpus"
    )
    enrichment: float | None = Field(description="share / background")


class AaProfileOut(BaseModel):
    """Which residue types carry a feature's activation, against the corpus's composition."""

    basis: str = Field(
        description="corpus: activation mass over every residue of the corpus the feature fires "
        "on (residue-level dictionaries); examples: positive part of the exact per-residue "
        "attribution of the pooled pre-activation over the feature's example proteins "
        "(protein-level dictionaries)"
    )
    meaning: str = Field(description="What the shares are, in words")
    n_residues: int = Field(description="Residues the shares are computed over")
    top: AaShare
    detector: bool = Field(description="One residue type dominates: a single-type detector")
    rule: str = Field(description="When a feature counts as a single-type detector")
    types: list[AaShare] = Field(description="Every residue type, in alphabet order")


class AminoAcidShift(BaseModel):
    amino_acid: str
    mean: float = Field(description="Mean Δ log p (natural log) over the examples")
    std: float


LM_EFFECT_METHODS = {
    "peak residue": (
        "Measured by intervention, not read off the weights: at the peak residue of each of the "
        "feature's strongest examples, the stream at the SAE's layer is set once with the feature "
        "at its typical activation and once with it at zero (all else unchanged), the rest of ESM2 "
        "runs on both, and Δ log p = with − without is read at that residue."
    ),
    "protein mean": (
        "Measured by intervention, not read off the weights: on each of the feature's strongest "
        "example proteins, the pooled code's decoded change is added to every residue at the SAE's "
        "layer, once with the feature at its typical activation and once with it at zero (all "
        "else unchanged); the rest of ESM2 runs on both, and Δ log p = with − without is averaged "
        "over the protein's residues."
    ),
}


class LmEffect(BaseModel):
    """What the feature makes the model predict where it fires (trainer/effects.py)."""

    amino_acids: str = Field(description="Order of `mean` and `std`")
    mean: list[float]
    std: list[float]
    n_examples: int
    activation: float = Field(description="The typical activation set (median of its peaks)")
    promoted: list[AminoAcidShift] = Field(description="Up to 3 with the largest positive mean")
    suppressed: list[AminoAcidShift] = Field(description="Up to 3 with the most negative mean")
    read_at: str = Field(
        description="peak residue (residue-level SAEs) or protein mean (protein-level SAEs)"
    )
    method: str = Field(description="How it was measured, in words")

    @classmethod
    def from_stored(cls, stored: dict[str, Any] | None) -> LmEffect | None:
        if not stored:
            return None
        amino_acids = "ACDEFGHIKLMNPQRSTVWY"
        shifts = [
            AminoAcidShift(amino_acid=a, mean=m, std=s)
            for a, m, s in zip(amino_acids, stored["mean"], stored["std"], strict=True)
        ]
        ranked = sorted(shifts, key=lambda x: -x.mean)
        return cls(
            amino_acids=amino_acids, mean=stored["mean"], std=stored["std"],
            n_examples=stored["n_examples"], activation=stored["activation"],
            promoted=[x for x in ranked[:3] if x.mean > 0],
            suppressed=[x for x in ranked[::-1][:3] if x.mean < 0],
            read_at=stored.get("read_at", "peak residue"),
            method=LM_EFFECT_METHODS[stored.get("read_at", "peak residue")],
        )  # fmt: skip


class DomainHitOut(_Orm):
    """One feature × Pfam / PROSITE family test (``trainer.domains``), human proteins only."""

    accession: str
    source: str = Field(description="Pfam or PROSITE")
    name: str | None = Field(
        default=None, description="Family name; null: the family table carries accessions only"
    )
    url: str = Field(description="The family's entry (InterPro for Pfam, PROSITE for PROSITE)")
    protocol: str = Field(description="strict (ours) or paper (two-sided, Bonferroni)")
    study_hits: int
    study_size: int
    pop_hits: int
    pop_size: int
    fold_enrichment: float
    p_value: float
    q_value: float | None = Field(description="BH over every test of the dictionary (strict)")
    p_bonferroni: float
    q_length: float | None = Field(description="BH of the length-stratified test (strict)")
    length_explained: bool = Field(
        default=False, description="Significant by q but not within length strata"
    )


class DomainControl(BaseModel):
    """The dictionary's share of features with a family hit, against its controls."""

    statement: str
    population_size: int
    families_tested: dict[str, int]
    pct_features_with_hit: float
    pct_features_with_hit_length_adjusted: float | None
    pct_features_with_hit_shuffled: float | None
    pct_features_with_hit_random_init: float | None


class FeatureDetail(BaseModel):
    feature: FeatureSummary
    sae: SaeSummary
    run_name: str
    explanation: ExplanationOut | None
    go_hits: list[GoHit] = Field(description="Hits under the strict protocol (ours)")
    go_hits_paper: list[GoHit] = Field(
        default_factory=list, description="Hits under the seed paper's protocol"
    )
    go_protocols: list[GoProtocolOut] = Field(
        default_factory=list, description="The dictionary's GO protocols, with their settings"
    )
    go_control: GoLengthControl | None = Field(
        None, description="The dictionary's GO hit rate against its length control"
    )
    aa_profile: AaProfileOut | None = Field(
        None, description="Amino-acid profile; null for runs published before profiles"
    )
    domain_hits: list[DomainHitOut] = Field(
        default_factory=list,
        description="Pfam / PROSITE families enriched among the human proteins the feature fires "
        "on, both protocols (strict first, by q)",
    )
    domain_control: DomainControl | None = Field(
        None, description="The dictionary's family hit rates and controls; null: not run"
    )
    top_examples: list[TopExampleOut]
    neighbors: list[NeighborOut]
    concepts: list[ConceptHit]
    baseline: BaselineContext | None
    track_scale: float = Field(description="The value that maps to full colour on residue tracks")
    lm_effect: LmEffect | None = Field(
        None,
        description="What the feature makes the model predict, by intervention; null where "
        "not measured (transcoders, neurons, dead features, runs published before)",
    )


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
    is_control: bool = Field(
        default=False, description="The feature's dictionary is a control (random-init model)"
    )
    hit: GoHit


class GoTermDetail(BaseModel):
    term: GoTermRef
    definition: str | None
    is_obsolete: bool
    parents: list[str]
    ancestors: list[GoTermRef] = Field(
        description="All ancestors via the stored parents, nearest first"
    )
    enriched_features: list[EnrichedFeature] = Field(
        description="Features with this term significant, per protocol (hit.protocol)"
    )
    protocols: list[GoProtocolOut] = Field(
        default_factory=list,
        description="The protocols of the dictionaries listed (one per distinct statement)",
    )


# A feature found by search, with the text that matched (no docstring: it would enter the schema).
class FeatureSearchHit(BaseModel):
    feature: FeatureSummary
    sae_name: str
    is_control: bool = Field(
        default=False, description="The feature's dictionary is a control (random-init model)"
    )
    snippet: str | None


class SearchResults(BaseModel):
    query: str
    features: list[FeatureSearchHit]
    proteins: list[ProteinRef]
    go_terms: list[GoTermRef]
