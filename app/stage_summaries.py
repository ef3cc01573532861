"""The JSON documents the trainer writes beside its outputs and reads back (and the app finds in
``AnalysisSummary.payload``): one model each, used by writer and reader alike.

Each model names the fields its readers use; everything else a stage records (settings,
timings, per-level tables) is kept as it is (``extra="allow"``), so a document read and written
again is unchanged. ``dump`` writes back exactly the keys that were set, in the order they were
given (typed fields included), so a writer moved onto a model writes the same file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

Number = int | float  # a figure keeps the type it was written with (3 stays 3, not 3.0)


class Document(BaseModel):
    """A stage's JSON document: known fields typed, the rest kept."""

    model_config = ConfigDict(extra="allow")
    _key_order: list[str] | None = PrivateAttr(default=None)  # the keys as given, in order

    @model_validator(mode="wrap")
    @classmethod
    def _remember_order(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        doc = handler(data)
        if isinstance(data, dict):
            doc._key_order = list(data)
        return doc

    @model_serializer(mode="wrap")
    def _in_given_order(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Typed fields otherwise come first: keep the writer's order instead."""
        out = handler(self)
        if not isinstance(out, dict) or self._key_order is None:
            return out
        return {**{k: out[k] for k in self._key_order if k in out}, **out}

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.model_validate(json.loads(Path(path).read_text()))

    @classmethod
    def from_payload(cls, payload: Any) -> Self | None:
        """A stored summary (``AnalysisSummary.payload``) as this document; None without one."""
        return None if payload is None else cls.model_validate(payload)

    @classmethod
    def read_if_exists(cls, path: Path) -> Self | None:
        return cls.read(path) if Path(path).exists() else None

    def dump(self) -> dict[str, Any]:
        """The document as plain JSON data (the keys that were set, none invented; numbers as they
        were read, NaN included)."""
        return self.model_dump(exclude_unset=True)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.dump(), indent=indent)


class CorpusManifest(Document):
    """``corpus/manifest.json``: what ingest selected and mapped (``trainer.ingest``)."""

    config_hash: str
    n_proteins: int
    n_structures_mapped: int


class TrainingMetrics(Document):
    """``saes/{name}/metrics.json``: fidelity of a trained dictionary (and loss recovered)."""

    fve: Number | None = None
    mse: Number | None = None
    l0: Number | None = None
    dead_fraction: Number | None = None
    loss_recovered: Number | None = None
    is_control: bool = False
    control_of: str | None = None


class AaProfileSummary(Document):
    """What the analysis records of its amino-acid profiles (``trainer.aa_profile``)."""

    basis: str = "corpus"  # summaries without it were made on the corpus
    background: list[Number] | None = None  # share of the corpus's residues per type


class AnalysisSummaryDoc(Document):
    """``analysis/{name}/summary.json``: corpus-wide figures of one dictionary's analysis."""

    fve_median: Number | None = None
    fve_p05: Number | None = None
    n_proteins: int
    n_latents: int
    seconds: Number | None = None
    aa_profile: AaProfileSummary | None = None  # analyses from before the profiles: none


class HitRate(Document):
    """Features with >= 1 significant term under one correction (``trainer.go.summary``)."""

    features_with_hit: int | None = None
    pct_features_with_hit: Number
    pct_active_features_with_hit: Number | None = None


class GoProtocolDoc(Document):
    """One protocol's statement and settings (its figures are the extra fields)."""

    statement: str
    settings: dict[str, Any]
    features_with_bp_hit: dict[str, int] | None = None
    features_with_hit: int | None = None
    pct_features_with_hit: Number | None = None


class GoConfigDoc(Document):
    alpha: Number
    active_threshold: Number = 0.0


class PermutationControl(Document):
    n_permutations: int | None = None
    mean_pct_features_with_hit_bh: Number | None = None
    mean_pct_features_with_hit_bonferroni: Number | None = None
    mean_pct_features_with_hit_length_bh: Number | None = None


class RandomModelControl(Document):
    dictionary: str
    pct_features_with_hit_bh: Number | None = None


class GoSummary(Document):
    """``go/{name}/summary.json``: a dictionary's GO enrichment (``trainer.go.stage``)."""

    n_features: int
    bh: HitRate
    bonferroni: HitRate
    length_bh: HitRate | None = None
    config: GoConfigDoc | None = None
    seconds: Number | None = None
    permutation_control: PermutationControl | None = None
    random_model_control: RandomModelControl | None = None
    protocols: dict[str, GoProtocolDoc] = {}


class BestForConcept(Document):
    """A concept's feature chosen on the train chains (its test metrics are extra fields)."""

    concept: str
    feature: int
    f1_train: Number
    f1_test: Number
    f1_fire_everywhere_test: Number | None = None  # the trivial predictor (absent before it)


class ConceptsSummary(Document):
    """``concepts/{name}/summary.json``: a dictionary's alignment with the concepts."""

    n_concepts_associated: int
    n_concepts_evaluated: int
    best_f1_distribution: dict[str, Any]
    best_per_concept: list[BestForConcept] = []

    def best_for(self, concept: str) -> BestForConcept | None:
        return next((b for b in self.best_per_concept if b.concept == concept), None)


class DomainRates(Document):
    """Features with a significant family under each correction (``domain_rates``)."""

    bh: HitRate | None = None
    bonferroni: HitRate | None = None
    length_bh: HitRate | None = None


class DomainPermutationControl(Document):
    permutations: list[DomainRates] = []


class DomainsSummary(DomainRates):
    """``domains/{name}/summary.json``: a dictionary's Pfam / PROSITE enrichment
    (``trainer.domains.stage``); its rates, as ``DomainRates``, are the top-level fields."""

    alpha: Number | None = None
    population_size: dict[str, int] = {}  # per source
    families_tested: dict[str, int] = {}  # per source
    permutation_control: DomainPermutationControl | None = None
    random_model_control: RandomModelControl | None = None  # with the control's other rates


class WorklistSummary(Document):
    """``worklist/{name}/summary.json``: a dictionary's missing-annotation worklists
    (``trainer.go.worklist_stage``); the findings page reads its figures as they are."""

    statement: str
    features_with_list: int
    lists: int
    precision: dict[str, Any]  # k -> precision at k (overall, by evidence, baseline) or None


class ConceptsManifest(Document):
    """``concepts/manifest.json``: what the stage was run from (its fingerprint) and its size."""

    config: dict[str, Any]
    dictionaries: list[str]
    inputs: dict[str, str | None]
    n_distinct_chains: int | None = None
    n_distinct_residues: int | None = None

    def fingerprint(self) -> dict[str, Any]:
        """What decides whether the stage is current (and the published digest hashes)."""
        return {"config": self.config, "dictionaries": self.dictionaries, "inputs": self.inputs}


class EmbedShard(Document):
    file: str
    n_proteins: int
    n_residues: int
    done: bool
    forward_s: Number | None = None  # seconds of its forward passes
    write_s: Number | None = None  # of its pooling and writing (a background thread)
    wait_s: Number | None = None  # the forward loop waiting for that writer


class EmbedManifest(Document):
    """``embeddings/manifest.json``: what the shards hold and which are written (``trainer.embed``)."""

    model: dict[str, str]  # name, sha256
    layers: list[int]
    residue_layers: list[int] | None = None  # absent: every layer (manifests from before)
    d_model: int
    dtype: str
    n_proteins: int
    n_residues: int
    corpus_sha256: str
    shards: list[EmbedShard]
    done: bool = False
    # With ``embed.residue_proteins``: proteins, seed, n_residues, file, sha256 of the sample.
    residue_sample: dict[str, Any] | None = None

    def identity(self) -> dict[str, Any]:
        """What work made from these embeddings depends on (its stamps digest it)."""
        return {"model": self.model, "corpus_sha256": self.corpus_sha256, "dtype": self.dtype}

    def shard_seconds(self) -> dict[str, float]:
        """Seconds the stage spent in forward passes, in pooling and writing, and waiting for
        the writer, summed over the shards: where its time went."""
        return {
            key: round(sum(getattr(s, key) or 0.0 for s in self.shards), 2)
            for key in ("forward_s", "write_s", "wait_s")
        }
