"""What the store already holds, for the writers (``trainer`` ingest and publish) to add only
what is missing: GO term ids, concepts, proteins by accession, structure chains by file."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from app.store.schema import Concept, GoTerm, Protein, Structure

LOOKUP_CHUNK = 900  # bound parameters per IN list: under SQLite's limit on old builds


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def stored_go_term_ids(session: Session) -> set[str]:
    return set(session.scalars(select(GoTerm.id)).all())


def stored_concept_ids(session: Session) -> dict[str, int]:
    """``{concept name: id}`` of every stored concept."""
    return {c.name: c.id for c in session.scalars(select(Concept)).all()}


def stored_protein_ids(session: Session, accessions: Sequence[str]) -> dict[str, int]:
    """``{accession: protein id}`` of those accessions the store holds."""
    ids: dict[str, int] = {}
    for chunk in _chunks(accessions, LOOKUP_CHUNK):
        rows = session.execute(
            select(Protein.accession, Protein.id).where(Protein.accession.in_(chunk))
        )
        ids.update({acc: pid for acc, pid in rows})
    return ids


def stored_structure_ids(
    session: Session, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """``{(file_path, chain): structure id}`` of those chains the store holds."""
    present: dict[tuple[str, str], int] = {}
    for chunk in _chunks(keys, LOOKUP_CHUNK // 2):  # two parameters per key
        rows = session.execute(
            select(Structure.file_path, Structure.chain, Structure.id).where(
                tuple_(Structure.file_path, Structure.chain).in_(chunk)
            )
        )
        present.update({(path, chain): sid for path, chain, sid in rows})
    return present
