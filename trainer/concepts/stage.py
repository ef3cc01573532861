"""The concepts stage: align every feature of every dictionary with residue-level labels.

Reads the label files (``labels``), encodes each distinct labelled chain once per pass with
every dictionary (``encode_residues[name]``: sequences → per-residue activations [len, F]),
and writes under ``{workdir}/concepts/``::

    concepts.json                 the concepts: name, description, source, chain/residue counts
    manifest.json                 config, dictionaries, timings
    {name}/alignments.npz         kept (feature, concept) pairs: metrics on train and on test
    {name}/summary.json           InterPLM's criterion (best feature F1 > 0.5), best F1 per concept
    DONE                          written last; a finished stage with the same inputs is skipped

Two passes: the first finds each feature's max over all encoded chains (the normaliser; skipped
for dictionaries whose ``feature_max`` is given), the second counts. Batches are outer and
dictionaries inner, so encoders that share a base model can share its forward pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, field_validator

from app.atomic_write import write_atomic
from app.esm_window import MAX_RESIDUES
from app.stage_summaries import ConceptsManifest
from trainer.concepts.labels import Chain, ConceptSet, Role, load_concepts
from trainer.concepts.metrics import (
    INTERPLM_THRESHOLDS,
    ConceptCounts,
    FeatureMax,
    normalise,
)
from trainer.concepts.results import concept_records, dictionary_results
from trainer.layout import RunLayout
from trainer.stage_driver import StageUnit, run_unit
from trainer.stamps import read_stamp

Encoder = Callable[[list[str]], list[np.ndarray]]
ROLES: tuple[Role, Role] = ("train", "test")


class ConceptsConfig(BaseModel):
    """Everything that decides the stage's output (saved in the manifest)."""

    label_dir: Path
    concepts: list[str] | None = Field(None, description="file stems; None = every *.tsv.gz")
    max_chains_per_split: int | None = Field(
        100, ge=0, description="per concept and split; 0 or None = every chain"
    )
    thresholds: tuple[float, ...] = INTERPLM_THRESHOLDS
    seed: int = 0
    max_length: int = Field(MAX_RESIDUES, ge=1, description="longer chains are dropped")
    batch_residues: int = Field(4096, ge=1, description="padded residues per encoder call")
    cache_gib: float = Field(
        4.0, ge=0, description="language-model representations kept between the two passes"
    )
    top_features: int = Field(20, ge=1, description="pairs kept per concept, by train F1")
    keep_f1: float = Field(0.2, description="also keep every pair with F1 above this")
    associated_f1: float = Field(0.5, description="InterPLM's 'associated' criterion")
    structures: bool = Field(
        False, description="add the DSSP concepts of the run's structure chains (needs mkdssp)"
    )
    structure_test_fraction: float = Field(
        0.3, gt=0, lt=1, description="share of structure proteins held out (by accession hash)"
    )
    structure_max_proteins_per_split: int | None = Field(
        200, ge=0, description="per structure concept and split; 0 or None = every protein"
    )
    structure_chains_per_protein: int = Field(
        3, ge=1, description="structure chains run through DSSP per protein (best coverage first)"
    )

    @field_validator("max_chains_per_split", "structure_max_proteins_per_split")
    @classmethod
    def _zero_means_all(cls, value: int | None) -> int | None:
        return None if value == 0 else value  # TOML has no null

    def label_paths(self) -> list[Path]:
        if self.concepts is None:
            paths = sorted(self.label_dir.glob("*.tsv.gz"))
        else:
            paths = [self.label_dir / f"{name}.tsv.gz" for name in self.concepts]
            missing = [str(p) for p in paths if not p.exists()]
            if missing:
                raise FileNotFoundError(f"label file(s) not found: {', '.join(missing)}")
        if not paths:
            raise FileNotFoundError(f"no *.tsv.gz label files in {self.label_dir}")
        return paths


@dataclass
class _Group:
    """The rows of one batch that belong to one (concept, split)."""

    key: tuple[int, Role]
    rows: np.ndarray
    labels: np.ndarray
    chain_starts: np.ndarray


@dataclass
class _Batch:
    sequences: list[str]
    groups: list[_Group]


def _plan_batches(concepts: list[ConceptSet], batch_residues: int) -> list[_Batch]:
    """Distinct sequences, longest first, packed so that n × longest ≤ batch_residues."""
    members: dict[str, list[tuple[int, Role, Chain]]] = {}
    for ci, concept in enumerate(concepts):
        for role in ROLES:
            for chain in concept.chains(role):
                members.setdefault(chain.sequence, []).append((ci, role, chain))
    order = sorted(members, key=lambda s: (-len(s), s))
    batches: list[list[str]] = []
    for seq in order:
        if batches and (len(batches[-1]) + 1) * len(batches[-1][0]) <= batch_residues:
            batches[-1].append(seq)
        else:
            batches.append([seq])
    planned = []
    for seqs in batches:
        offsets = np.concatenate(([0], np.cumsum([len(s) for s in seqs])))
        # Each scored segment of a chain (the whole chain unless it has a mask) counts as a
        # chain of its own for site metrics, so a site never spans unscored positions.
        parts: dict[tuple[int, Role], list[tuple[np.ndarray, np.ndarray]]] = {}
        for i, seq in enumerate(seqs):
            for ci, role, chain in members[seq]:
                for a, b in chain.scored_segments():
                    rows = np.arange(offsets[i] + a, offsets[i] + b)
                    parts.setdefault((ci, role), []).append((rows, chain.labels[a:b]))
        groups = []
        for key, items in parts.items():
            lengths = [len(lab) for _, lab in items]
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
            rows = np.concatenate([r for r, _ in items])
            labels = np.concatenate([lab for _, lab in items])
            groups.append(_Group(key, rows, labels, starts))
        planned.append(_Batch(seqs, groups))
    return planned


def _encode(name: str, encoder: Encoder, seqs: list[str], n_features: int | None) -> np.ndarray:
    """One batch through one dictionary, checked, as float32 [sum(len), F]."""
    acts = encoder(seqs)
    if len(acts) != len(seqs):
        raise ValueError(f"dictionary {name}: {len(acts)} arrays for {len(seqs)} sequences")
    for seq, a in zip(seqs, acts, strict=True):
        width = n_features if n_features is not None else a.shape[-1]
        if a.ndim != 2 or a.shape != (len(seq), width):
            raise ValueError(
                f"dictionary {name}: activations of shape {a.shape} for a sequence of "
                f"{len(seq)} residues (expected ({len(seq)}, {width}))"
            )
    block = np.concatenate(acts).astype(np.float32, copy=False)
    if not np.isfinite(block).all() or (block < 0).any():
        raise ValueError(f"dictionary {name}: activations must be finite and non-negative")
    return block


def _fingerprint(
    cfg: ConceptsConfig, dictionaries: list[str], inputs: Mapping[str, str | None] | None
) -> dict[str, Any]:
    # The cache budget changes memory use, not results: a finished stage stays valid across it.
    config = json.loads(cfg.model_dump_json(exclude={"cache_gib"}))
    return {"config": config, "dictionaries": list(dictionaries), "inputs": dict(inputs or {})}


def _load_finished(layout: RunLayout, dictionaries: list[str]) -> dict[str, dict[str, Any]]:
    return {
        name: json.loads(layout.concept_results(name).summary.read_text()) for name in dictionaries
    }


def _stamp_older_stage(unit: StageUnit, layout: RunLayout, fingerprint: dict[str, Any]) -> None:
    """A stage finished before stamps (DONE "ok") whose manifest holds these very inputs is
    current: its marker gets the stamp instead of the stage running again."""
    if read_stamp(unit.done) != "ok" or not layout.concepts_manifest.exists():
        return
    if ConceptsManifest.read(layout.concepts_manifest).fingerprint() == fingerprint:
        unit.mark_done()


def run_concepts_stage(
    workdir: Path,
    cfg: ConceptsConfig,
    *,
    encode_residues: Mapping[str, Encoder],
    dictionaries: list[str],
    feature_max: Mapping[str, np.ndarray] | None = None,
    inputs: Mapping[str, str | None] | None = None,
    structure_concepts: Callable[[], list[ConceptSet]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run (or skip, when finished with the same inputs) the stage; returns summary per name.

    ``inputs``: per dictionary, the stamp of what it was made from (its training's DONE, see
    ``trainer.stamps``), so a dictionary trained again is aligned again (and the corpus stamp,
    when structure concepts are on). ``structure_concepts`` builds the DSSP concepts
    (``trainer.concepts.structure_labels``); called only when the stage actually runs."""
    if cfg.structures and structure_concepts is None:
        raise ValueError("[concepts] structures = true but no structure concepts were given")
    missing = [d for d in dictionaries if d not in encode_residues]
    if missing:
        raise ValueError(f"no encoder given for dictionary(ies) {', '.join(missing)}")
    layout = RunLayout(workdir)
    fingerprint = _fingerprint(cfg, dictionaries, inputs)
    outputs = [layout.concepts_manifest, layout.concept_records]
    outputs += [layout.concept_results(d).summary for d in dictionaries]
    unit = StageUnit("concepts", layout.concepts.done, fingerprint, outputs=outputs)
    _stamp_older_stage(unit, layout, fingerprint)

    def align() -> dict[str, dict[str, Any]]:
        return _align(layout, cfg, encode_residues, dictionaries, feature_max,
                      structure_concepts, fingerprint)  # fmt: skip

    return run_unit(unit, align, load=lambda: _load_finished(layout, dictionaries),
                    clear=layout.concepts.dir)  # fmt: skip


def _align(
    layout: RunLayout,
    cfg: ConceptsConfig,
    encode_residues: Mapping[str, Encoder],
    dictionaries: list[str],
    feature_max: Mapping[str, np.ndarray] | None,
    structure_concepts: Callable[[], list[ConceptSet]] | None,
    fingerprint: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Both passes over the labelled chains, and every file of ``concepts/`` but its DONE."""
    layout.concepts.dir.mkdir(parents=True)

    t0 = time.perf_counter()
    concepts = load_concepts(
        cfg.label_paths(),
        max_chains=cfg.max_chains_per_split,
        seed=cfg.seed,
        max_length=cfg.max_length,
    )
    if cfg.structures and structure_concepts is not None:
        concepts += structure_concepts()
    batches = _plan_batches(concepts, cfg.batch_residues)
    n_distinct = sum(len(s) for b in batches for s in b.sequences)
    timing: dict[str, dict[str, float]] = {
        d: {"encode_s": 0.0, "max_s": 0.0, "count_s": 0.0} for d in dictionaries
    }
    given = dict(feature_max or {})
    maxima: dict[str, np.ndarray] = {d: np.asarray(v, np.float32) for d, v in given.items()}
    n_features: dict[str, int | None] = {
        d: maxima[d].shape[0] if d in maxima else None for d in dictionaries
    }

    # Pass 1: each feature's max over every encoded chain.
    needs_max = [d for d in dictionaries if d not in maxima]
    running: dict[str, FeatureMax] = {}
    for batch in batches if needs_max else []:
        for d in needs_max:
            t = time.perf_counter()
            block = _encode(d, encode_residues[d], batch.sequences, n_features[d])
            timing[d]["encode_s"] += time.perf_counter() - t
            t = time.perf_counter()
            n_features[d] = block.shape[1]
            running.setdefault(d, FeatureMax(block.shape[1])).update(block)
            timing[d]["max_s"] += time.perf_counter() - t
    maxima.update({d: fm.value for d, fm in running.items()})

    # Pass 2: counts per (dictionary, concept, split), all features at once.
    counts: dict[str, dict[tuple[int, Role], ConceptCounts]] = {}
    for batch in batches:
        for d in dictionaries:
            t = time.perf_counter()
            block = _encode(d, encode_residues[d], batch.sequences, n_features[d])
            timing[d]["encode_s"] += time.perf_counter() - t
            t = time.perf_counter()
            block = normalise(block, maxima[d])
            per = counts.setdefault(d, {})
            for g in batch.groups:
                if g.key not in per:
                    per[g.key] = ConceptCounts(block.shape[1], cfg.thresholds)
                per[g.key].add(block[g.rows], g.labels, g.chain_starts)
            timing[d]["count_s"] += time.perf_counter() - t

    records = concept_records(concepts)
    write_atomic(layout.concept_records, json.dumps(records, indent=1))
    summaries: dict[str, dict[str, Any]] = {}
    for d in dictionaries:
        per = counts.get(d, {})
        n_feat = int(maxima[d].shape[0])
        by_concept = [
            (
                c.name,
                per.get((ci, "train")) or ConceptCounts(n_feat, cfg.thresholds),
                per.get((ci, "test")) or ConceptCounts(n_feat, cfg.thresholds),
            )
            for ci, c in enumerate(concepts)
        ]
        timing[d]["residues_per_pass"] = float(n_distinct)
        timing[d]["passes"] = 1.0 + (d in needs_max)
        summaries[d] = dictionary_results(
            layout.concept_results(d), d, by_concept, cfg, maxima[d], records, timing[d]
        )
    manifest = ConceptsManifest(
        **fingerprint,
        n_distinct_chains=sum(len(b.sequences) for b in batches),
        n_distinct_residues=n_distinct,
        seconds=time.perf_counter() - t0,
        timing=timing,
    )
    write_atomic(layout.concepts_manifest, manifest.to_json(indent=1))
    return summaries
