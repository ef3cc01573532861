"""The store's schema (SQLAlchemy 2 typed ORM).

One *run* is one trainer invocation. Inside it live dictionaries (``saes``): sparse autoencoders,
transcoders and the raw-neuron baseline, all with the same shape of *features* so every analysis
(top examples, GO enrichment, explanations, concepts) is like for like. Readers only ever see runs
whose ``status`` is ``published``; the trainer loads a run in one transaction (see ``publish``).

Per-residue values are stored compactly as little-endian float16 bytes (``residue_values``), one
row per (feature, protein) example, never one row per residue.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

RUN_STATUSES = ("draft", "published")
SAE_KINDS = ("topk", "batchtopk", "relu_l1", "transcoder", "neurons")
LEVELS = ("protein", "residue")
GO_NAMESPACES = ("BP", "MF", "CC")
# GO protocols, each stored per dictionary (GoProtocol) and per hit (GoEnrichment.protocol):
# "strict" = ours (trainer.go.enrichment), "paper" = the seed paper's goatools defaults exactly
# (trainer.go.paper). Their settings differ; each GoProtocol row states them.
GO_PROTOCOLS = ("strict", "paper")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp on every database (SQLite stores none: read it back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012


class Run(Base):
    """One trainer invocation: the base model, the corpus, every parameter, and its status."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    base_model: Mapped[str] = mapped_column(String(200))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    layer: Mapped[int] = mapped_column(Integer)
    corpus: Mapped[str] = mapped_column(String(500))
    n_proteins: Mapped[int] = mapped_column(Integer, default=0)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Digest of the trainer's completion stamps behind what was published (trainer/stamps.py):
    # the same config with other artifacts (work redone) publishes again. NULL before stamps.
    artifacts_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)

    saes: Mapped[list[Sae]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )


class Sae(Base):
    """A dictionary inside a run: an SAE, a transcoder, or the layer's raw neurons as a baseline."""

    __tablename__ = "saes"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(16))
    layer: Mapped[int] = mapped_column(Integer)
    out_layer: Mapped[int | None] = mapped_column(Integer, nullable=True)
    d_in: Mapped[int] = mapped_column(Integer)
    n_latents: Mapped[int] = mapped_column(Integer)
    k: Mapped[int | None] = mapped_column(Integer, nullable=True)
    l1_coefficient: Mapped[float | None] = mapped_column(Float, nullable=True)
    # True for controls (e.g. an SAE trained on a randomly initialised copy of the model).
    is_control: Mapped[bool] = mapped_column(Boolean, default=False)
    control_of: Mapped[str | None] = mapped_column(String(200), nullable=True)
    fve: Mapped[float | None] = mapped_column(Float, nullable=True)
    mse: Mapped[float | None] = mapped_column(Float, nullable=True)
    l0: Mapped[float | None] = mapped_column(Float, nullable=True)
    dead_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss_recovered: Mapped[float | None] = mapped_column(Float, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    weights_path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    weights_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)

    run: Mapped[Run] = relationship(back_populates="saes")


class Protein(Base):
    """A protein of the corpus (or a structure chain that matched none, entered in its own right)."""

    __tablename__ = "proteins"

    id: Mapped[int] = mapped_column(primary_key=True)
    accession: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    gene: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    organism: Mapped[str | None] = mapped_column(String(300), nullable=True)
    taxon_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    length: Mapped[int] = mapped_column(Integer)
    sequence: Mapped[str] = mapped_column(Text)
    # GO ids as annotated (not propagated), ';'-separated per namespace.
    go_bp: Mapped[str | None] = mapped_column(Text, nullable=True)
    go_mf: Mapped[str | None] = mapped_column(Text, nullable=True)
    go_cc: Mapped[str | None] = mapped_column(Text, nullable=True)
    pfam: Mapped[str | None] = mapped_column(Text, nullable=True)
    ec: Mapped[str | None] = mapped_column(String(200), nullable=True)
    source: Mapped[str | None] = mapped_column(String(200), nullable=True)

    structures: Mapped[list[Structure]] = relationship(back_populates="protein")


class Structure(Base):
    """A structure chain and its residue-by-residue mapping to the protein sequence."""

    __tablename__ = "structures"
    __table_args__ = (UniqueConstraint("file_path", "chain"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    protein_id: Mapped[int] = mapped_column(
        ForeignKey("proteins.id", ondelete="CASCADE"), index=True
    )
    file_path: Mapped[str] = mapped_column(String(1000))
    format: Mapped[str] = mapped_column(String(16))  # pdb | mmcif
    chain: Mapped[str] = mapped_column(String(8))
    source: Mapped[str | None] = mapped_column(String(200), nullable=True)
    structure_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    chain_sequence: Mapped[str] = mapped_column(Text)
    # Parallel lists, one entry per structure residue in ATOM order: the author residue id
    # (number + insertion code, e.g. "52A") and the 0-based sequence position it aligns to (-1: none).
    residue_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    sequence_positions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    identity: Mapped[float | None] = mapped_column(Float, nullable=True)
    coverage: Mapped[float | None] = mapped_column(Float, nullable=True)

    protein: Mapped[Protein] = relationship(back_populates="structures")


class Feature(Base):
    """One latent of a dictionary, with its activation statistics over the run's corpus."""

    __tablename__ = "features"
    __table_args__ = (
        UniqueConstraint("sae_id", "index"),
        Index("ix_features_sae_density", "sae_id", "density"),
        Index("ix_features_sae_max", "sae_id", "max_activation"),
        Index("ix_features_sae_score", "sae_id", "explanation_score"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    density: Mapped[float] = mapped_column(
        Float, default=0.0
    )  # fraction of proteins (or residues) active
    n_active: Mapped[int] = mapped_column(Integer, default=0)
    max_activation: Mapped[float] = mapped_column(Float, default=0.0)
    mean_activation: Mapped[float] = mapped_column(Float, default=0.0)  # mean over active examples
    hist_edges: Mapped[list[Any]] = mapped_column(JSON, default=list)
    hist_counts: Mapped[list[Any]] = mapped_column(JSON, default=list)
    is_dead: Mapped[bool] = mapped_column(Boolean, default=False)
    pattern_class: Mapped[str | None] = mapped_column(String(32), nullable=True)
    auto_label: Mapped[str | None] = mapped_column(Text, nullable=True)
    auto_label_source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Denormalised for sorting/filtering the feature list without joins.
    explanation_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_go_hits: Mapped[int] = mapped_column(Integer, default=0)
    # Terms significant by the length-stratified test (BH): hits protein length cannot explain.
    # NULL for runs published before that test existed.
    n_go_hits_length: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Terms significant under the seed paper's protocol (GoProtocol "paper": BP, two-sided,
    # Bonferroni); NULL for runs published before it was computed.
    n_go_hits_paper: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Feature map: UMAP of the decoder directions, in [0, 1]. NULL off the map (dead latents,
    # the neuron baseline) and for runs published before the map existed.
    map_x: Mapped[float | None] = mapped_column(Float, nullable=True)
    map_y: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Amino-acid profile (trainer.aa_profile): share of the feature's activation mass on each
    # residue type of app.residue_types.ALPHABET, over aa_n_residues residues (residue level:
    # every residue it fires on; protein level: positive attribution over its example proteins);
    # its commonest type and share, and whether it is a single-type detector
    # (app.residue_types.is_detector). NULL for runs published before profiles.
    aa_profile: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    aa_n_residues: Mapped[int | None] = mapped_column(Integer, nullable=True)
    aa_top: Mapped[str | None] = mapped_column(String(1), nullable=True)
    aa_top_share: Mapped[float | None] = mapped_column(Float, nullable=True)
    aa_detector: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # What the feature makes the model predict, by intervention (trainer/effects.py): mean and std
    # of Δ log p over the 20 amino acids ("ACDEFGHIKLMNPQRSTVWY"), examples, activation used.
    # NULL where not measured (transcoders, neurons, dead latents, older runs).
    lm_effect: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Pfam / PROSITE enrichment (trainer.domains, strict protocol; NULL: run without it):
    # significant families (BH q < alpha), those beyond length too (length-stratified q < alpha),
    # and the strongest of the latter (lowest length-adjusted q) with its source.
    n_domain_hits: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_domain_hits_length: Mapped[int | None] = mapped_column(Integer, nullable=True)
    top_domain: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    top_domain_source: Mapped[str | None] = mapped_column(String(8), nullable=True)


class TopExample(Base):
    """A protein on which a feature fires, in a bin ("top", "q1".."qN", "structure")."""

    __tablename__ = "top_examples"
    __table_args__ = (
        Index("ix_top_examples_feature_bin", "feature_id", "bin", "rank"),
        Index("ix_top_examples_protein", "protein_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    protein_id: Mapped[int] = mapped_column(ForeignKey("proteins.id", ondelete="CASCADE"))
    bin: Mapped[str] = mapped_column(String(16))
    rank: Mapped[int] = mapped_column(Integer)
    activation: Mapped[float] = mapped_column(Float)  # the example's score: pooled or max residue
    max_position: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 0-based residue
    # float16 little-endian, one value per residue: activations (residue level) or the exact
    # per-residue attribution of the pooled pre-activation (protein level).
    residue_values: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # The structure chain that shows the feature best on this protein (peak residue resolved,
    # then the most activation mass on resolved residues), the share of the feature's positive
    # mass on residues it resolves, and whether it resolves the peak. NULL: no chain, or a run
    # analysed before these were stored (the page then computes them from the values).
    structure_id: Mapped[int | None] = mapped_column(
        ForeignKey("structures.id", ondelete="SET NULL"), nullable=True
    )
    structure_share: Mapped[float | None] = mapped_column(Float, nullable=True)
    structure_peak_covered: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class ProteinFeature(Base):
    """The features most active on a protein, per dictionary (for the protein page)."""

    __tablename__ = "protein_features"
    __table_args__ = (
        Index("ix_protein_features_protein_sae", "protein_id", "sae_id", "rank"),
        Index("ix_protein_features_feature", "feature_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    protein_id: Mapped[int] = mapped_column(ForeignKey("proteins.id", ondelete="CASCADE"))
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    rank: Mapped[int] = mapped_column(Integer)
    activation: Mapped[float] = mapped_column(Float)
    residue_values: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class FeatureNeighbor(Base):
    """Nearest features by decoder cosine similarity."""

    __tablename__ = "feature_neighbors"
    __table_args__ = (Index("ix_feature_neighbors_feature", "feature_id", "rank"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    neighbor_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    rank: Mapped[int] = mapped_column(Integer)
    cosine: Mapped[float] = mapped_column(Float)


class GoTerm(Base):
    """A Gene Ontology term with its place in the DAG (depth: longest path, level: shortest)."""

    __tablename__ = "go_terms"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # GO:0008150
    name: Mapped[str] = mapped_column(String(500))
    namespace: Mapped[str] = mapped_column(String(2), index=True)  # BP | MF | CC
    depth: Mapped[int] = mapped_column(Integer)
    level: Mapped[int] = mapped_column(Integer)
    definition: Mapped[str | None] = mapped_column(Text, nullable=True)
    parents: Mapped[list[Any]] = mapped_column(JSON, default=list)  # direct is_a/part_of parents
    is_obsolete: Mapped[bool] = mapped_column(Boolean, default=False)


class GoEnrichment(Base):
    """One feature × GO term test result under one protocol (``GO_PROTOCOLS``)."""

    __tablename__ = "go_enrichments"
    __table_args__ = (
        Index("ix_go_enrichments_feature", "feature_id", "q_value"),
        Index("ix_go_enrichments_term", "go_id", "q_value"),
        Index("ix_go_enrichments_sae", "sae_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    go_id: Mapped[str] = mapped_column(ForeignKey("go_terms.id"))
    namespace: Mapped[str] = mapped_column(String(2))
    study_hits: Mapped[int] = mapped_column(Integer)
    study_size: Mapped[int] = mapped_column(Integer)
    pop_hits: Mapped[int] = mapped_column(Integer)
    pop_size: Mapped[int] = mapped_column(Integer)
    odds_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    fold_enrichment: Mapped[float] = mapped_column(Float)
    # "strict": one-sided p; "paper": two-sided p (a depleted term, fold < 1, can be a hit).
    p_value: Mapped[float] = mapped_column(Float)
    # Benjamini–Hochberg over all tests of the SAE ("strict"); NULL under "paper" (no BH there).
    q_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Bonferroni within the feature: over the namespace's tested terms ("strict"), over every
    # term present in the human population ("paper").
    p_bonferroni: Mapped[float] = mapped_column(Float)
    # The same test within protein-length strata (trainer.go.stratified) and its BH value over
    # all tests of the SAE; NULL for runs published before it existed.
    p_length: Mapped[float | None] = mapped_column(Float, nullable=True)
    q_length: Mapped[float | None] = mapped_column(Float, nullable=True)
    method: Mapped[str] = mapped_column(String(64))
    is_most_specific: Mapped[bool] = mapped_column(Boolean, default=False)
    protocol: Mapped[str] = mapped_column(String(16), default="strict", server_default="strict")


class DomainEnrichment(Base):
    """One feature × Pfam / PROSITE family test under one protocol ("strict" | "paper"), on the
    corpus's human proteins (``trainer.domains``); columns as ``GoEnrichment``'s."""

    __tablename__ = "domain_enrichments"
    __table_args__ = (
        Index("ix_domain_enrichments_feature", "feature_id", "q_value"),
        Index("ix_domain_enrichments_accession", "accession"),
        Index("ix_domain_enrichments_sae", "sae_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    accession: Mapped[str] = mapped_column(String(16))  # PF00096 | PS00028
    source: Mapped[str] = mapped_column(String(8))  # Pfam | PROSITE
    study_hits: Mapped[int] = mapped_column(Integer)
    study_size: Mapped[int] = mapped_column(Integer)
    pop_hits: Mapped[int] = mapped_column(Integer)
    pop_size: Mapped[int] = mapped_column(Integer)
    odds_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    fold_enrichment: Mapped[float] = mapped_column(Float)
    p_value: Mapped[float] = mapped_column(Float)
    q_value: Mapped[float | None] = mapped_column(Float, nullable=True)  # NULL under "paper"
    p_bonferroni: Mapped[float] = mapped_column(Float)
    p_length: Mapped[float | None] = mapped_column(Float, nullable=True)
    q_length: Mapped[float | None] = mapped_column(Float, nullable=True)
    protocol: Mapped[str] = mapped_column(String(16), default="strict")


class GoProtocol(Base):
    """A GO protocol as run on one dictionary: its one-line statement, its settings and figures
    (population, terms tested, features with a hit): the trainer's ``protocols`` summary."""

    __tablename__ = "go_protocols"
    __table_args__ = (UniqueConstraint("sae_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(16))  # strict | paper
    statement: Mapped[str] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    figures: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class GoWorklistCandidate(Base):
    """A protein a feature's GO hit proposes for a term it lacked in the 2014 snapshot, ranked by
    the feature's activation, with what the 2022 snapshot says (``trainer.go.worklist``)."""

    __tablename__ = "go_worklist"
    __table_args__ = (
        Index("ix_go_worklist_feature", "feature_id", "go_id", "rank"),
        # covering the GO page's per-list counts (migration 0012)
        Index("ix_go_worklist_term", "go_id", "feature_id", "sae_id", "confirmed"),
        Index("ix_go_worklist_sae", "sae_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    go_id: Mapped[str] = mapped_column(ForeignKey("go_terms.id"))
    protein_id: Mapped[int] = mapped_column(ForeignKey("proteins.id", ondelete="CASCADE"))
    rank: Mapped[int] = mapped_column(Integer)  # 1 = the feature's most active candidate
    activation: Mapped[float] = mapped_column(Float)
    # The strongest 2022 evidence group that added the term (or a descendant):
    # experimental | curated | electronic; NULL = not gained by 2022.
    confirmed: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Gain rate of length-matched human proteins lacking the term in 2014 (the baseline).
    baseline_rate: Mapped[float] = mapped_column(Float)


class Explanation(Base):
    """A natural-language explanation of a feature (Claude), with the exact prompt's hash."""

    __tablename__ = "explanations"
    __table_args__ = (Index("ix_explanations_feature", "feature_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(200))
    prompt_hash: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ExplanationScore(Base):
    """How well an explanation predicts held-out activations (e.g. Pearson r)."""

    __tablename__ = "explanation_scores"
    __table_args__ = (Index("ix_explanation_scores_explanation", "explanation_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    explanation_id: Mapped[int] = mapped_column(ForeignKey("explanations.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    p_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Concept(Base):
    """A per-residue label set (e.g. BioLiP DNA-binding sites), for concept alignment."""

    __tablename__ = "concepts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str | None] = mapped_column(String(500), nullable=True)
    n_chains: Mapped[int] = mapped_column(Integer, default=0)
    n_residues: Mapped[int] = mapped_column(Integer, default=0)
    n_positive: Mapped[int] = mapped_column(Integer, default=0)


class ConceptAlignment(Base):
    """How well one feature (or neuron) picks out one concept's residues, on held-out chains."""

    __tablename__ = "concept_alignments"
    __table_args__ = (
        Index("ix_concept_alignments_concept", "concept_id", "sae_id", "f1"),
        Index("ix_concept_alignments_feature", "feature_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    concept_id: Mapped[int] = mapped_column(ForeignKey("concepts.id", ondelete="CASCADE"))
    threshold: Mapped[float] = mapped_column(Float)
    precision: Mapped[float] = mapped_column(Float)
    recall: Mapped[float] = mapped_column(Float)
    f1: Mapped[float] = mapped_column(Float)
    site_recall: Mapped[float | None] = mapped_column(Float, nullable=True)
    split: Mapped[str] = mapped_column(String(32), default="test")


class ConceptExample(Base):
    """A protein that a dictionary's train-chosen feature for a concept fires on, with the
    concept's labels laid on its sequence: stored at publish time (``trainer.concepts.examples``)
    so the Concept page reads only the store, never the label files."""

    __tablename__ = "concept_examples"
    __table_args__ = (UniqueConstraint("concept_id", "feature_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    concept_id: Mapped[int] = mapped_column(ForeignKey("concepts.id", ondelete="CASCADE"))
    protein_id: Mapped[int] = mapped_column(ForeignKey("proteins.id", ondelete="CASCADE"))
    structure_id: Mapped[int | None] = mapped_column(
        ForeignKey("structures.id", ondelete="SET NULL"), nullable=True
    )
    pdb_chain: Mapped[str] = mapped_column(String(64))  # the labelled chain laid on the protein
    via: Mapped[str] = mapped_column(Text)  # how: through a structure chain, or verbatim
    # One character per protein residue: "1" labelled, "0" not, "-" no labelled residue maps here.
    labels: Mapped[str] = mapped_column(Text)
    label_file: Mapped[str] = mapped_column(String(200))  # the labels' file (provenance)


class AnalysisSummary(Base):
    """A stage's summary figures for one dictionary (GO hit rates, explanation comparison, ...)."""

    __tablename__ = "analysis_summaries"
    __table_args__ = (UniqueConstraint("sae_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64))  # go | go_control | explanations | concepts | ...
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Publication(Base):
    """The store's publication id: one row whose ``token`` changes whenever what readers see
    changes (a run published, replaced or removed). Servers compare it per request to keep their
    caches of rendered pages, and clients' ETags, valid across processes."""

    __tablename__ = "publication"

    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(32))
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
