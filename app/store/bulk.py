"""Bulk loading on each database's fast path: PostgreSQL COPY, SQLite executemany.

Rows are inserted inside the caller's transaction, so a crash mid-load leaves nothing behind.
Primary keys are reserved up front (``reserve_ids``) so that child rows can reference parents
without a round trip per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.orm import Session
from sqlalchemy.types import JSON

from app.store.schema import Base

_CHUNK = 20_000


def _table(model_or_table: type[Base] | Table) -> Table:
    if isinstance(model_or_table, Table):
        return model_or_table
    return model_or_table.__table__  # type: ignore[return-value]


def reserve_ids(session: Session, model: type[Base] | Table, n: int) -> list[int]:
    """Reserve ``n`` primary keys for ``model`` in the current transaction.

    PostgreSQL draws them from the table's sequence (safe under concurrent writers); SQLite
    serialises writers, so ``max(id)+1 ...`` inside the write transaction is safe there.
    """
    if n <= 0:
        return []
    table = _table(model)
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        rows = session.execute(
            text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
            {"t": table.name, "n": n},
        )
        return [int(r[0]) for r in rows]
    # Take SQLite's write lock first so no other writer can claim the same ids.
    session.execute(text(f"UPDATE {table.name} SET id = id WHERE 0"))
    start = session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    return list(range(int(start) + 1, int(start) + 1 + n))


def bulk_insert(
    session: Session, model: type[Base] | Table, rows: Iterable[Mapping[str, Any]]
) -> int:
    """Insert ``rows`` (dicts keyed by column name) with COPY on PostgreSQL, executemany elsewhere."""
    table = _table(model)
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        return _copy_postgres(session, table, rows)
    count = 0
    batch: list[Mapping[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= _CHUNK:
            session.execute(insert(table), batch)
            count += len(batch)
            batch = []
    if batch:
        session.execute(insert(table), batch)
        count += len(batch)
    return count


def _copy_postgres(session: Session, table: Table, rows: Iterable[Mapping[str, Any]]) -> int:
    from psycopg.types.json import Json

    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return 0
    columns: Sequence[str] = list(first.keys())
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    dbapi = session.connection().connection.driver_connection
    assert dbapi is not None
    column_sql = ", ".join(f'"{c}"' for c in columns)
    count = 0
    with (
        dbapi.cursor() as cursor,
        cursor.copy(f'COPY "{table.name}" ({column_sql}) FROM STDIN') as copy,
    ):
        for row in _chain(first, iterator):
            copy.write_row([Json(row[c]) if c in json_columns else row[c] for c in columns])
            count += 1
    return count


def _chain(
    first: Mapping[str, Any], rest: Iterable[Mapping[str, Any]]
) -> Iterable[Mapping[str, Any]]:
    yield first
    yield from rest
