"""Bulk loading on each database's fast path: PostgreSQL COPY, SQLite executemany.

Rows travel as columns (``bulk_insert`` gathers dict rows into them): on SQLite each column
goes once through its own bind processor, then the rows go to the driver's ``executemany`` as
tuples; SQLAlchemy's per-row parameter handling cost as much as the inserts themselves
(publishing the human-proteome run: 30 s of 33 s).

Rows are inserted inside the caller's transaction, so a crash mid-load leaves nothing behind.
Primary keys are reserved up front (``reserve_ids``) so that child rows can reference parents
without a round trip per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice
from typing import Any, cast

from sqlalchemy import Table, insert, text
from sqlalchemy.orm import Session
from sqlalchemy.types import JSON, Boolean, LargeBinary

from app.queries.stored import max_id
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
    start = max_id(session, table)
    return list(range(start + 1, start + 1 + n))


def bulk_insert(
    session: Session, model: type[Base] | Table, rows: Iterable[Mapping[str, Any]]
) -> int:
    """Insert ``rows`` (dicts keyed by column name, every row the keys of the first) with COPY
    on PostgreSQL, executemany elsewhere: the rows are gathered into columns for
    :func:`bulk_insert_columns`."""
    rows = list(rows)
    if not rows:
        return 0
    return bulk_insert_columns(
        session, model, {name: [row[name] for row in rows] for name in rows[0]}
    )


def bulk_insert_columns(
    session: Session,
    model: type[Base] | Table,
    columns: Mapping[str, Sequence[Any]],
    constants: Mapping[str, Any] | None = None,
) -> int:
    """Insert rows given column by column (equal-length sequences), plus ``constants`` shared by
    every row (a parent's id): the same rows as :func:`bulk_insert`, without building a dict
    per row, which dominated publishing a proteome-sized run once the inserts were fast."""
    table = _table(model)
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns of {table.name} differ in length: {lengths}")
    n = next(iter(lengths.values()), 0)
    if n == 0:
        return 0
    given: dict[str, Sequence[Any]] = {
        **columns,
        **{k: [v] * n for k, v in (constants or {}).items()},
    }
    filled = _fast_path_defaults(session, table, given)
    if filled is None:
        names = list(given)
        return _insert_core(session, table, (dict(zip(names, values, strict=True))
                                             for values in zip(*given.values(), strict=True)))  # fmt: skip
    given |= {name: [make() for _ in range(n)] for name, make in filled.items()}
    dialect = session.get_bind().dialect
    if dialect.name == "sqlite":  # convert column by column: one call per column, not per value
        for name, values in given.items():
            process = _sqlite_processor(table, name, dialect)
            if process is not None:
                given[name] = [process(v) for v in values]
    names, tuples = list(given), zip(*given.values(), strict=True)
    if dialect.name == "postgresql":
        return _copy_postgres(session, table, names, tuples)
    return _executemany_sqlite(session, table, names, tuples)


def _fast_path_defaults(
    session: Session, table: Table, first: Mapping[str, Any]
) -> dict[str, Callable[[], Any]] | None:
    """The Python-side defaults the fast path must apply itself (None: no fast path here).

    The fast paths write through the driver's connection, which bypasses autoflush: pending
    ORM rows (a parent just added) are flushed first, in the same transaction."""
    if session.get_bind().dialect.name not in ("postgresql", "sqlite"):
        return None
    filled = _python_defaults(table, first)
    if filled is not None:
        session.flush()
    return filled


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


def _sqlite_processor(table: Table, name: str, dialect: Any) -> Callable[[Any], Any] | None:
    """The column's bind processor on SQLite, None where sqlite3 takes the value as it is."""
    column_type = table.c[name].type
    if isinstance(column_type, _NATIVE_ON_SQLITE):
        return None
    return cast(Callable[[Any], Any] | None,
                column_type.dialect_impl(dialect).bind_processor(dialect))  # fmt: skip


def _executemany_sqlite(
    session: Session, table: Table, columns: list[str], tuples: Iterable[Sequence[Any]]
) -> int:
    """Tuples (bind processors already applied) straight to sqlite3's executemany, inside the
    session's transaction, ``_CHUNK`` rows per call."""
    dbapi = _driver_connection(session)
    column_sql = ", ".join(f'"{c}"' for c in columns)
    sql = f'INSERT INTO "{table.name}" ({column_sql}) VALUES ({", ".join("?" * len(columns))})'
    cursor = dbapi.cursor()
    count = 0
    iterator = iter(tuples)
    try:
        while batch := list(islice(iterator, _CHUNK)):
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
    session: Session, table: Table, columns: list[str], tuples: Iterable[Sequence[Any]]
) -> int:
    from psycopg.types.json import Json

    json_at = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, JSON)]
    dbapi = _driver_connection(session)
    column_sql = ", ".join(f'"{c}"' for c in columns)
    count = 0
    with (
        dbapi.cursor() as cursor,
        cursor.copy(f'COPY "{table.name}" ({column_sql}) FROM STDIN') as copy,
    ):
        for values in tuples:
            if json_at:
                values = list(values)
                for i in json_at:
                    values[i] = Json(values[i])
            copy.write_row(values)
            count += 1
    return count
