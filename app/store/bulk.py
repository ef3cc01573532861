"""Bulk loading on each database's fast path: PostgreSQL COPY, SQLite executemany.

On SQLite the rows go to the driver's ``executemany`` as tuples, with each column's own bind
processor: SQLAlchemy's per-row parameter handling cost as much as the inserts themselves
(publishing the human-proteome run: 30 s of 33 s).

Rows are inserted inside the caller's transaction, so a crash mid-load leaves nothing behind.
Primary keys are reserved up front (``reserve_ids``) so that child rows can reference parents
without a round trip per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.orm import Session
from sqlalchemy.types import JSON, Boolean, LargeBinary

from app.store.schema import Base

_CHUNK = 20_000
# sqlite3 binds bool and bytes natively: their SQLAlchemy processors only copy the value
# (about 7% of publishing the human-proteome run).
_NATIVE_ON_SQLITE = (Boolean, LargeBinary)


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
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return 0
    every = _chain(first, iterator)
    fast = bind.dialect.name in ("postgresql", "sqlite")
    filled = _python_defaults(table, first) if fast else None
    if filled is None:  # another database, or a SQL-expression default: SQLAlchemy's insert
        return _insert_core(session, table, every)
    # The fast paths write through the driver's connection, which bypasses autoflush: pending
    # ORM rows (a parent just added) go first, in the same transaction.
    session.flush()
    columns = [*first.keys(), *filled]
    if bind.dialect.name == "postgresql":
        return _copy_postgres(session, table, columns, every, filled)
    return _executemany_sqlite(session, table, columns, every, filled)


def _driver_connection(session: Session) -> Any:
    dbapi = session.connection().connection.driver_connection
    assert dbapi is not None
    return dbapi


def _insert_core(session: Session, table: Table, rows: Iterable[Mapping[str, Any]]) -> int:
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


def _executemany_sqlite(
    session: Session,
    table: Table,
    columns: list[str],
    rows: Iterable[Mapping[str, Any]],
    filled: dict[str, Callable[[], Any]],
) -> int:
    """Rows as tuples straight to sqlite3's executemany, inside the session's transaction.

    ``columns`` are the rows' keys, then the left-out columns whose Python-side defaults
    ``filled`` makes, as with ``insert(table)``.
    """
    given = columns[: len(columns) - len(filled)]
    dialect = session.get_bind().dialect
    processors: list[tuple[int, Callable[[Any], Any]]] = []
    for i, name in enumerate(columns):
        if isinstance(table.c[name].type, _NATIVE_ON_SQLITE):
            continue
        processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors.append((i, processor))
    getter = itemgetter(*given)
    single = len(given) == 1
    defaults = list(filled.values())
    dbapi = _driver_connection(session)
    column_sql = ", ".join(f'"{c}"' for c in columns)
    sql = f'INSERT INTO "{table.name}" ({column_sql}) VALUES ({", ".join("?" * len(columns))})'
    cursor = dbapi.cursor()
    count = 0
    batch: list[Sequence[Any]] = []
    try:
        for row in rows:
            values = (getter(row),) if single else getter(row)
            if defaults:
                values = (*values, *(default() for default in defaults))
            if processors:
                values = list(values)
                for i, process in processors:
                    values[i] = process(values[i])
            batch.append(values)
            if len(batch) >= _CHUNK:
                cursor.executemany(sql, batch)
                count += len(batch)
                batch = []
        if batch:
            cursor.executemany(sql, batch)
            count += len(batch)
    finally:
        cursor.close()
    return count


def _python_defaults(table: Table, first: Mapping[str, Any]) -> dict[str, Callable[[], Any]] | None:
    """Makers of the Python-side defaults (``default=``) of the columns ``first`` leaves out,
    which ``insert(table)`` would apply and a raw COPY or executemany would not; None when one
    is a SQL expression (only SQLAlchemy's own insert can apply that)."""
    makers: dict[str, Callable[[], Any]] = {}
    for column in table.columns:
        default = column.default
        if default is None or column.name in first:
            continue
        if getattr(default, "is_scalar", False):
            makers[column.name] = lambda value=default.arg: value  # type: ignore[attr-defined,misc]
        elif getattr(default, "is_callable", False):
            makers[column.name] = lambda fn=default.arg: fn(None)  # type: ignore[attr-defined,misc]
        else:
            return None
    return makers


def _copy_postgres(
    session: Session,
    table: Table,
    columns: list[str],
    rows: Iterable[Mapping[str, Any]],
    filled: dict[str, Callable[[], Any]],
) -> int:
    from psycopg.types.json import Json

    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    dbapi = _driver_connection(session)
    column_sql = ", ".join(f'"{c}"' for c in columns)
    count = 0
    with (
        dbapi.cursor() as cursor,
        cursor.copy(f'COPY "{table.name}" ({column_sql}) FROM STDIN') as copy,
    ):
        for row in rows:
            values = {**row, **{c: make() for c, make in filled.items()}} if filled else row
            copy.write_row([Json(values[c]) if c in json_columns else values[c] for c in columns])
            count += 1
    return count


def _chain(
    first: Mapping[str, Any], rest: Iterable[Mapping[str, Any]]
) -> Iterable[Mapping[str, Any]]:
    yield first
    yield from rest
