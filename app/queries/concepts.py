"""Queries for the Concept page: a concept's best-aligned features, and one labelled example.

Alignments come from ``ConceptAlignment`` (test-split metrics at the train-chosen threshold)
of published runs only; the train-chosen best feature per dictionary comes from the concepts
stage's summary (``AnalysisSummary`` kind ``concepts``). Features are chosen and ranked by their
train F1 only; test F1 is what is reported, beside the fire-everywhere baseline's test F1.

The labelled example is the one the publisher chose and stored (``ConceptExample``: the
concept's labels laid on a protein the feature fires on, see ``trainer.concepts.examples``);
the page reads only the store, never the label files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.queries.findings import dictionary_kind
from app.queries.scope import published
from app.stage_summaries import BestForConcept, ConceptsSummary
from app.store.codec import decode_values
from app.store.schema import (
    AnalysisSummary,
    Concept,
    ConceptAlignment,
    ConceptExample,
    Feature,
    Protein,
    Run,
    Sae,
    Structure,
    TopExample,
)


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
    chosen: dict[str, tuple[Sae, BestForConcept]] = {}
    for sae, payload in summaries:
        summary = ConceptsSummary.from_payload(payload)
        for b in summary.best_per_concept if summary is not None else []:
            held = chosen.get(b.concept)
            if held is None or float(b.f1_train) > float(held[1].f1_train):
                chosen[b.concept] = (sae, b)
    rows = []
    for concept in session.scalars(select(Concept).order_by(Concept.name)):
        if concept.name not in chosen:
            rows.append(ConceptIndexRow(concept))
            continue
        sae, b = chosen[concept.name]
        feature_id = session.scalars(
            select(Feature.id).where(Feature.sae_id == sae.id, Feature.index == int(b.feature))
        ).one_or_none()
        rows.append(
            ConceptIndexRow(
                concept,
                sae,
                feature_id,
                int(b.feature),
                float(b.f1_train),
                float(b.f1_test),
                b.f1_fire_everywhere_test,
            )
        )
    return rows


def _best_entry(session: Session, sae_id: int, concept: str) -> BestForConcept | None:
    summary = ConceptsSummary.from_payload(
        session.scalars(
            select(AnalysisSummary.payload).where(
                AnalysisSummary.sae_id == sae_id, AnalysisSummary.kind == "concepts"
            )
        ).one_or_none()
    )
    return None if summary is None else summary.best_for(concept)


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
        best_index = int(entry.feature) if entry is not None else None
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
        baseline = entry.f1_fire_everywhere_test if entry is not None else None
        out.append(DictionaryAlignments(run, sae, dictionary_kind(sae), keep, best_index, baseline))
    return out


def example_candidates(
    session: Session, feature_id: int, max_proteins: int
) -> list[tuple[Protein, int]]:
    """The first ``max_proteins`` distinct proteins of the feature's stored examples, strongest
    first, with their structures loaded, each with its number of residue values (the publisher
    lays a concept's labels on them: ``trainer.concepts.examples``)."""
    rows = session.execute(
        select(TopExample.protein_id, func.length(TopExample.residue_values))
        .where(TopExample.feature_id == feature_id, TopExample.residue_values.is_not(None))
        .order_by(TopExample.activation.desc())
    ).all()
    sizes: dict[int, int] = {}
    for pid, n_bytes in rows:
        sizes.setdefault(pid, int(n_bytes) // 2)  # float16: two bytes a residue
    chosen = list(sizes)[:max_proteins]
    proteins = session.scalars(
        select(Protein).where(Protein.id.in_(chosen)).options(selectinload(Protein.structures))
    ).all()
    by_id = {p.id: p for p in proteins}
    return [(by_id[pid], sizes[pid]) for pid in chosen if pid in by_id]


@dataclass
class LabelledExample:
    """A protein the feature fires on, with the concept's labels laid on its sequence."""

    feature_id: int
    protein: Protein
    activations: npt.NDArray[np.float32]  # per protein residue
    labels: npt.NDArray[np.int8]  # 1 labelled, 0 not, -1 no labelled residue maps here
    pdb_chain: str
    structure: Structure | None
    via: str
    label_file: str

    @property
    def n_labelled(self) -> int:
        return int((self.labels == 1).sum())

    def n_labelled_firing(self, cut: float) -> int:
        return int(((self.labels == 1) & (self.activations > cut)).sum())


_LABEL_CODES = {"1": 1, "0": 0}


def concept_example(session: Session, concept: Concept, feature_id: int) -> LabelledExample | None:
    """The example the publisher stored for this concept and feature, with the feature's
    activations on that protein; None when none was stored."""
    stored = session.scalar(
        select(ConceptExample).where(
            ConceptExample.concept_id == concept.id, ConceptExample.feature_id == feature_id
        )
    )
    if stored is None:
        return None
    blob = session.scalar(
        select(TopExample.residue_values)
        .where(TopExample.feature_id == feature_id, TopExample.protein_id == stored.protein_id,
               TopExample.residue_values.is_not(None))
        .order_by(TopExample.activation.desc())
        .limit(1)
    )  # fmt: skip
    protein = session.get(Protein, stored.protein_id)
    if blob is None or protein is None:
        return None
    labels = np.array([_LABEL_CODES.get(c, -1) for c in stored.labels], dtype=np.int8)
    structure = session.get(Structure, stored.structure_id) if stored.structure_id else None
    return LabelledExample(feature_id, protein, decode_values(blob), labels, stored.pdb_chain,
                           structure, stored.via, stored.label_file)  # fmt: skip


def concept_examples(
    session: Session, concept: Concept, dictionaries: list[DictionaryAlignments]
) -> list[tuple[str, LabelledExample, float, list[object]]]:
    """Per dictionary with a best feature and a stored example: (dictionary name, example, the
    feature's cut in activation units, the example's track rows scaled by its max activation)."""
    examples: list[tuple[str, LabelledExample, float, list[object]]] = []
    for d in dictionaries:
        best = d.best
        if best is None:
            continue
        ex = concept_example(session, concept, best.feature_id)
        if ex is None:
            continue
        scale = session.scalar(select(Feature.max_activation).where(Feature.id == best.feature_id))
        scale = scale or 1.0
        examples.append((d.sae.name, ex, best.threshold * scale, list(track_rows(ex, scale))))
    return examples


def track_rows(
    ex: LabelledExample, scale: float, width: int = 60
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
