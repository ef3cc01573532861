"""Queries for the Concept page: a concept's best-aligned features, and one labelled example.

Alignments come from ``ConceptAlignment`` (test-split metrics at the train-chosen threshold)
of published runs only; the train-chosen best feature per dictionary comes from the concepts
stage's summary (``AnalysisSummary`` kind ``concepts``). Features are chosen and ranked by their
train F1 only; test F1 is what is reported, beside the fire-everywhere baseline's test F1.

The store keeps no per-residue labels, so the example reads the concept's label file
(``{shared}/data/residue_annotations/{name}.tsv.gz``: ``pdb_chain``, ``sequence``, 0/1
``labels``, ``split``) and lays it on a protein the feature fires on: through one of the
protein's structure chains whose sequence is a labelled chain (then ``sequence_positions`` map
labels onto the protein), or a labelled chain found verbatim in the protein's sequence.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.queries.findings import dictionary_kind
from app.queries.scope import published
from app.store.codec import decode_values
from app.store.schema import (
    AnalysisSummary,
    Concept,
    ConceptAlignment,
    Feature,
    Protein,
    Run,
    Sae,
    Structure,
    TopExample,
)

MIN_SUBSTRING = 20  # shorter labelled chains are too likely to match by chance


@dataclass(frozen=True)
class AlignmentRow:
    feature_id: int
    index: int
    f1: float
    precision: float
    recall: float
    site_recall: float | None
    threshold: float
    f1_train: float | None
    label: str | None


@dataclass
class DictionaryAlignments:
    run: Run
    sae: Sae
    kind: str
    rows: list[AlignmentRow]
    best_index: int | None  # the train-chosen best feature (concepts summary), if known
    f1_fire_everywhere: float | None = None  # test F1 of the trivial all-residues predictor

    @property
    def best(self) -> AlignmentRow | None:
        """The summary's train-chosen feature; without a summary, the best train F1 shown."""
        chosen = [r for r in self.rows if r.index == self.best_index]
        return chosen[0] if chosen else (self.rows[0] if self.rows else None)


@dataclass(frozen=True)
class ConceptIndexRow:
    """One concept on ``/concepts``: the feature with the best *train* F1 over every published
    dictionary's train-chosen feature, its test F1, and the fire-everywhere test F1."""

    concept: Concept
    sae: Sae | None = None
    feature_id: int | None = None
    feature_index: int | None = None
    f1_train: float | None = None
    f1_test: float | None = None
    f1_fire_everywhere_test: float | None = None


def concept_by_name(session: Session, name: str) -> Concept | None:
    return session.scalars(select(Concept).where(Concept.name == name)).one_or_none()


def concept_index(session: Session) -> list[ConceptIndexRow]:
    """Every concept, with the train-chosen feature of the published dictionary whose choice
    has the best train F1 (ties: the newer run, then the lower dictionary id). Nothing here is
    chosen on the test chains: the test F1 is only reported."""
    summaries = session.execute(
        select(Sae, AnalysisSummary.payload)
        .join(Run, Run.id == Sae.run_id)
        .join(AnalysisSummary, AnalysisSummary.sae_id == Sae.id)
        .where(published(), AnalysisSummary.kind == "concepts")
        .order_by(Run.id.desc(), Sae.id)
    ).all()
    chosen: dict[str, tuple[Sae, dict[str, Any]]] = {}
    for sae, payload in summaries:
        for b in (payload or {}).get("best_per_concept", []):
            held = chosen.get(b["concept"])
            if held is None or float(b["f1_train"]) > float(held[1]["f1_train"]):
                chosen[b["concept"]] = (sae, b)
    rows = []
    for concept in session.scalars(select(Concept).order_by(Concept.name)):
        if concept.name not in chosen:
            rows.append(ConceptIndexRow(concept))
            continue
        sae, b = chosen[concept.name]
        feature_id = session.scalars(
            select(Feature.id).where(Feature.sae_id == sae.id, Feature.index == int(b["feature"]))
        ).one_or_none()
        rows.append(
            ConceptIndexRow(
                concept,
                sae,
                feature_id,
                int(b["feature"]),
                float(b["f1_train"]),
                float(b["f1_test"]),
                b.get("f1_fire_everywhere_test"),
            )
        )
    return rows


def _best_entry(session: Session, sae_id: int, concept: str) -> dict[str, Any]:
    payload = session.scalars(
        select(AnalysisSummary.payload).where(
            AnalysisSummary.sae_id == sae_id, AnalysisSummary.kind == "concepts"
        )
    ).one_or_none()
    for b in (payload or {}).get("best_per_concept", []):
        if b.get("concept") == concept:
            return dict(b)
    return {}


def concept_alignments(
    session: Session, concept: Concept, per_dictionary: int = 10
) -> list[DictionaryAlignments]:
    """Per dictionary of every published run: its features ranked by *train* F1 (each at its
    train-chosen threshold), best first; the test metrics are reported, never used to rank."""
    saes = session.execute(
        select(Sae, Run)
        .join(Run, Run.id == Sae.run_id)
        .where(
            published(),
            Sae.id.in_(
                select(ConceptAlignment.sae_id).where(ConceptAlignment.concept_id == concept.id)
            ),
        )
        .order_by(Run.id.desc(), Sae.id)
    ).all()
    out = []
    for sae, run in saes:
        train = dict(
            session.execute(
                select(ConceptAlignment.feature_id, ConceptAlignment.f1).where(
                    ConceptAlignment.concept_id == concept.id,
                    ConceptAlignment.sae_id == sae.id,
                    ConceptAlignment.split == "train",
                )
            ).all()
        )
        entry = _best_entry(session, sae.id, concept.name)
        best_index = int(entry["feature"]) if "feature" in entry else None
        rows = session.execute(
            select(ConceptAlignment, Feature.index, Feature.auto_label)
            .join(Feature, Feature.id == ConceptAlignment.feature_id)
            .where(
                ConceptAlignment.concept_id == concept.id,
                ConceptAlignment.sae_id == sae.id,
                ConceptAlignment.split == "test",
            )
        ).all()
        ranked = [
            AlignmentRow(
                a.feature_id,
                int(index),
                a.f1,
                a.precision,
                a.recall,
                a.site_recall,
                a.threshold,
                train.get(a.feature_id),
                label,
            )
            for a, index, label in rows
        ]
        ranked.sort(key=lambda r: (-(r.f1_train if r.f1_train is not None else -1.0), r.index))
        keep = ranked[:per_dictionary]
        keep += [r for r in ranked[per_dictionary:] if r.index == best_index]
        baseline = entry.get("f1_fire_everywhere_test")
        out.append(DictionaryAlignments(run, sae, dictionary_kind(sae), keep, best_index, baseline))
    return out


@lru_cache(maxsize=64)
def label_index(path: Path) -> dict[str, tuple[str, str]]:
    """Labelled sequence -> (pdb_chain, 0/1 labels OR-merged over identical sequences)."""
    out: dict[str, tuple[str, str]] = {}
    with gzip.open(path, "rt", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        for line, rec in enumerate(reader, start=2):
            seq, labels = rec["sequence"], rec["labels"]
            if len(seq) != len(labels) or set(labels) - {"0", "1"}:
                raise ValueError(
                    f"{path}, line {line} ({rec['pdb_chain']}): labels must be a 0/1 string "
                    f"as long as the sequence ({len(labels)} labels, {len(seq)} residues)"
                )
            if seq in out:
                merged = "".join(max(a, b) for a, b in zip(out[seq][1], labels, strict=True))
                out[seq] = (out[seq][0], merged)
            else:
                out[seq] = (rec["pdb_chain"], labels)
    return out


@dataclass
class ConceptExample:
    """A protein the feature fires on, with the concept's labels laid on its sequence."""

    feature_id: int
    protein: Protein
    activations: npt.NDArray[np.float32]  # per protein residue
    labels: npt.NDArray[np.int8]  # 1 labelled, 0 not, -1 no labelled residue maps here
    pdb_chain: str
    structure: Structure | None
    via: str

    @property
    def n_labelled(self) -> int:
        return int((self.labels == 1).sum())

    def n_labelled_firing(self, cut: float) -> int:
        return int(((self.labels == 1) & (self.activations > cut)).sum())


def _lay_labels(
    protein: Protein, index: dict[str, tuple[str, str]]
) -> tuple[npt.NDArray[np.int8], str, Structure | None, str] | None:
    n = len(protein.sequence)
    for st in protein.structures:
        if st.chain_sequence in index:
            chain, labels = index[st.chain_sequence]
            out = np.full(n, -1, dtype=np.int8)
            for lab, pos in zip(labels, st.sequence_positions, strict=False):
                if 0 <= pos < n:
                    out[pos] = int(lab)
            return out, chain, st, f"structure chain {st.chain} ({st.source or st.file_path})"
    for seq, (chain, labels) in index.items():
        start = protein.sequence.find(seq) if len(seq) >= MIN_SUBSTRING else -1
        if start >= 0:
            out = np.full(n, -1, dtype=np.int8)
            out[start : start + len(seq)] = np.frombuffer(labels.encode(), np.uint8) - ord("0")
            return out, chain, None, f"labelled chain at residues {start + 1}–{start + len(seq)}"
    return None


def concept_example(
    session: Session, label_file: Path, feature_id: int, max_proteins: int = 40
) -> ConceptExample | None:
    """The protein, among those the feature's stored examples cover, with the most labelled
    residues (ties: the stronger activation); None when no labelled chain maps onto any."""
    if not label_file.exists():
        return None
    index = label_index(label_file)
    examples = session.execute(
        select(TopExample.protein_id, TopExample.residue_values)
        .where(TopExample.feature_id == feature_id, TopExample.residue_values.is_not(None))
        .order_by(TopExample.activation.desc())
    ).all()
    seen: dict[int, bytes | None] = {}
    for pid, blob in examples:
        seen.setdefault(pid, blob)
    best: ConceptExample | None = None
    for pid in list(seen)[:max_proteins]:
        protein = session.get(Protein, pid)
        if protein is None:
            continue
        laid = _lay_labels(protein, index)
        if laid is None or not (laid[0] == 1).any():
            continue
        acts = decode_values(seen[pid])
        if len(acts) != len(protein.sequence):
            continue
        ex = ConceptExample(feature_id, protein, acts, laid[0], laid[1], laid[2], laid[3])
        if best is None or ex.n_labelled > best.n_labelled:
            best = ex
    return best


def concept_examples(
    session: Session, label_file: Path, dictionaries: list[DictionaryAlignments]
) -> list[tuple[str, ConceptExample, float, list[object]]]:
    """Per dictionary with a best feature and a labelled example: (dictionary name, example, the
    feature's cut in activation units, the example's track rows scaled by its max activation)."""
    examples: list[tuple[str, ConceptExample, float, list[object]]] = []
    for d in dictionaries:
        best = d.best
        if best is None:
            continue
        ex = concept_example(session, label_file, best.feature_id)
        if ex is None:
            continue
        scale = session.scalar(select(Feature.max_activation).where(Feature.id == best.feature_id))
        scale = scale or 1.0
        examples.append((d.sae.name, ex, best.threshold * scale, list(track_rows(ex, scale))))
    return examples


def track_rows(
    ex: ConceptExample, scale: float, width: int = 60
) -> list[tuple[int, list[tuple[str, float, int]]]]:
    """Rows of ``width`` residues: (1-based start, [(residue, activation / scale, label)])."""
    norm = np.clip(ex.activations / scale, 0.0, 1.0) if scale > 0 else ex.activations * 0
    seq = ex.protein.sequence
    return [
        (
            s + 1,
            [
                (seq[i], round(float(norm[i]), 3), int(ex.labels[i]))
                for i in range(s, min(s + width, len(seq)))
            ],
        )
        for s in range(0, len(seq), width)
    ]
