"""Concept examples for the Concept page, chosen at publish time: per dictionary and concept, a
protein its train-chosen feature fires on, with the concept's labels laid on its sequence.

The labels are the concept stage's own (``read_concept``: checked rows, identical sequences
OR-merged). They are laid through one of the protein's structure chains whose sequence is a
labelled chain (``sequence_positions`` map labels onto the protein), or a labelled chain found
verbatim in the protein's sequence. Of the proteins the feature's stored examples cover, the one
with the most labelled residues wins (ties: the stronger activation).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.queries.concepts import example_candidates
from app.store.bulk import bulk_insert
from app.store.schema import ConceptExample, Protein, Structure
from trainer.concepts.labels import read_concept

MIN_SUBSTRING = 20  # shorter labelled chains are too likely to match by chance
MAX_PROTEINS = 40  # of the feature's stored examples, strongest first
NO_LABEL = "-"  # a residue no labelled residue maps onto


@lru_cache(maxsize=32)
def label_index(path: Path) -> dict[str, tuple[str, str]]:
    """Labelled sequence -> (pdb_chain, "0"/"1" labels), over both splits of the label file
    (every chain, however long: the example only lays labels, it encodes nothing)."""
    concept = read_concept(path, max_length=2**31)
    return {
        ch.sequence: (ch.pdb_chain, "".join("1" if x else "0" for x in ch.labels))
        for ch in (*concept.train, *concept.test)
    }


@dataclass(frozen=True)
class LaidLabels:
    labels: str  # one character per protein residue: "1", "0" or NO_LABEL
    pdb_chain: str
    structure: Structure | None
    via: str

    @property
    def n_labelled(self) -> int:
        return self.labels.count("1")


def lay_labels(protein: Protein, index: dict[str, tuple[str, str]]) -> LaidLabels | None:
    """The concept's labels on ``protein``'s sequence, through a structure chain or verbatim."""
    n = len(protein.sequence)
    for st in protein.structures:
        if st.chain_sequence in index:
            chain, labels = index[st.chain_sequence]
            out = [NO_LABEL] * n
            for lab, pos in zip(labels, st.sequence_positions, strict=False):
                if 0 <= pos < n:
                    out[pos] = lab
            via = f"structure chain {st.chain} ({st.source or st.file_path})"
            return LaidLabels("".join(out), chain, st, via)
    for seq, (chain, labels) in index.items():
        start = protein.sequence.find(seq) if len(seq) >= MIN_SUBSTRING else -1
        if start >= 0:
            out = [NO_LABEL] * start + list(labels) + [NO_LABEL] * (n - start - len(seq))
            via = f"labelled chain at residues {start + 1}–{start + len(seq)}"
            return LaidLabels("".join(out), chain, None, via)
    return None


def best_example(
    candidates: list[tuple[Protein, int]], index: dict[str, tuple[str, str]]
) -> tuple[Protein, LaidLabels] | None:
    """The candidate (protein, number of residue values) with the most labelled residues laid."""
    best: tuple[Protein, LaidLabels] | None = None
    for protein, n_values in candidates:
        laid = lay_labels(protein, index)
        if laid is None or not laid.n_labelled or n_values != len(protein.sequence):
            continue
        if best is None or laid.n_labelled > best[1].n_labelled:
            best = (protein, laid)
    return best


def store_concept_examples(
    session: Session,
    sae_id: int,
    summary: dict[str, Any],
    feature_ids: list[int],
    concept_ids: dict[str, int],
    label_files: dict[str, Path],
) -> int:
    """One example per concept of the dictionary's concepts summary (``best_per_concept``) whose
    label file is at hand; return the number of rows written."""
    rows = []
    for entry in summary.get("best_per_concept", []):
        name, path = entry["concept"], label_files.get(entry["concept"])
        if name not in concept_ids or path is None or not path.is_file():
            continue
        feature_id = feature_ids[int(entry["feature"])]
        found = best_example(
            example_candidates(session, feature_id, MAX_PROTEINS), label_index(path)
        )
        if found is None:
            continue
        protein, laid = found
        rows.append({
            "sae_id": sae_id, "feature_id": feature_id, "concept_id": concept_ids[name],
            "protein_id": protein.id, "pdb_chain": laid.pdb_chain, "via": laid.via,
            "structure_id": laid.structure.id if laid.structure is not None else None,
            "labels": laid.labels, "label_file": path.name,
        })  # fmt: skip
    bulk_insert(session, ConceptExample, rows)
    return len(rows)


def label_files(label_dir: str | Path | None, records: list[dict[str, Any]]) -> dict[str, Path]:
    """Concept name -> its label file, from the stage's ``concepts.json`` records."""
    if label_dir is None:
        return {}
    return {r["name"]: Path(label_dir) / r["file"] for r in records if r.get("file")}
