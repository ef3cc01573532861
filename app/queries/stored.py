"""What the store already holds, for the writers (``trainer`` ingest and publish) to add only
what is missing: GO term ids, concepts, proteins by accession, structure chains by file."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table, func, select, tuple_
from sqlalchemy.orm import Session

from app.store.schema import Concept, GoTerm, Protein, Run, Structure

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


def run_by_name(session: Session, name: str) -> Run | None:
    """The run called ``name``, published or not: publish replaces or refuses it by name."""
    return session.scalar(select(Run).where(Run.name == name))


def run_id_by_name(session: Session, name: str) -> int | None:
    """The id of the run called ``name``, or None: removal needs only the id."""
    run_id = session.scalar(select(Run.id).where(Run.name == name))
    return None if run_id is None else int(run_id)


def max_id(session: Session, table: Table) -> int:
    """The largest id in ``table`` (0 when empty): SQLite id reservation counts on from it."""
    return int(session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one())
