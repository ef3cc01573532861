"""The corpus and its structure chains as store rows (``proteins``, ``structures``).

Proteins are global across runs (unique by accession): a publish inserts only the missing ones and
reuses the ids of the rest. Called by the publish stage inside its one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.queries.stored import stored_protein_ids, stored_structure_ids
from app.store.bulk import bulk_insert, reserve_ids
from app.store.schema import Protein, Structure
from trainer.corpus import Corpus
from trainer.structures import StructureMapping


def _go(ids: set[str]) -> str | None:
    return ";".join(sorted(ids)) or None


def store_rows(corpus: Corpus) -> list[dict[str, Any]]:
    """One ``proteins`` row (without id) per corpus protein, in corpus order."""
    return [
        {
            "accession": acc,
            "name": corpus.names[i],
            "gene": corpus.genes[i],
            "organism": corpus.organisms[i],
            "taxon_id": corpus.taxon_ids[i],
            "length": len(corpus.sequences[i]),
            "sequence": corpus.sequences[i],
            "go_bp": _go(corpus.go_bp[i]),
            "go_mf": _go(corpus.go_mf[i]),
            "go_cc": _go(corpus.go_cc[i]),
            "pfam": corpus.pfam[i],
            "ec": corpus.ec[i],
            "source": corpus.sources[i] or None,
        }
        for i, acc in enumerate(corpus.accessions)
    ]


def structure_rows(
    structures: Iterable[StructureMapping], protein_ids: dict[str, int]
) -> list[dict[str, Any]]:
    """One ``structures`` row (without id) per mapped chain."""
    return [
        {
            "protein_id": protein_ids[s.accession],
            "file_path": s.file_path,
            "format": s.format,
            "chain": s.chain,
            "source": s.source,
            "structure_type": s.structure_type,
            "chain_sequence": s.chain_sequence,
            "residue_ids": list(s.residue_ids),
            "sequence_positions": list(s.sequence_positions),
            "identity": s.identity,
            "coverage": s.coverage,
        }
        for s in structures
    ]


def upsert_proteins(session: Session, corpus: Corpus) -> dict[str, int]:
    """Insert the corpus proteins the store lacks; return ``{accession: protein id}`` for all."""
    ids = stored_protein_ids(session, corpus.accessions)
    missing = [row for row in store_rows(corpus) if row["accession"] not in ids]
    new_ids = reserve_ids(session, Protein, len(missing))
    for row, pid in zip(missing, new_ids, strict=True):
        row["id"] = pid
        ids[row["accession"]] = pid
    bulk_insert(session, Protein, missing)
    return ids


def _stored_structures(
    session: Session, structures: Sequence[StructureMapping]
) -> dict[tuple[str, str], int]:
    """``{(file_path, chain): structure id}`` of the chains the store already holds."""
    return stored_structure_ids(session, sorted({(s.file_path, s.chain) for s in structures}))


def insert_structures(
    session: Session, structures: Sequence[StructureMapping], protein_ids: dict[str, int]
) -> int:
    """Insert the chains whose (file_path, chain) the store lacks; returns how many were new."""
    present = set(_stored_structures(session, structures))
    new: list[StructureMapping] = []
    for s in structures:
        if (s.file_path, s.chain) not in present:
            present.add((s.file_path, s.chain))
            new.append(s)
    return bulk_insert(session, Structure, structure_rows(new, protein_ids))


def structure_ids(session: Session, structures: Sequence[StructureMapping]) -> list[int]:
    """The store id of each chain of ``structures`` (in order), once they are inserted."""
    stored = _stored_structures(session, structures)
    return [stored[(s.file_path, s.chain)] for s in structures]
