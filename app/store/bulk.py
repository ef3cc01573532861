"""Bulk loading on each database's fast path: PostgreSQL COPY, SQLite executemany.

On SQLite the rows go to the driver's ``executemany`` as tuples, with each column's own bind
processor: SQLAlchemy's per-row parameter handling cost as much as the inserts themselves
(publishing the human-proteome run: 30 s of 33 s).

Rows are inserted inside the caller's transaction, so a crash mid-load leaves nothing behind.
Primary keys are reserved up front (``reserve_ids``) so that child rows can reference parents
without a round trip per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from operator import itemgetter
from typing import Any, cast

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
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return 0
    every = _chain(first, iterator)
    filled = _fast_path_defaults(session, table, first)
    if filled is None:  # another database, or a SQL-expression default: SQLAlchemy's insert
        return _insert_core(session, table, every)
    given = list(first.keys())
    getter = itemgetter(*given)
    single = len(given) == 1
    defaults = list(filled.values())

    def tuples() -> Iterator[Sequence[Any]]:
        for row in every:
            values = (getter(row),) if single else getter(row)
            yield (*values, *(make() for make in defaults)) if defaults else values

    return _insert_tuples(session, table, [*given, *filled], tuples(), per_row=True)


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
    return _insert_tuples(session, table, list(given), zip(*given.values(), strict=True),
                          per_row=False)  # fmt: skip


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


def _insert_tuples(
    session: Session,
    table: Table,
    columns: list[str],
    tuples: Iterable[Sequence[Any]],
    *,
    per_row: bool,
) -> int:
    """Rows as tuples in ``columns`` order through the database's fast path. ``per_row``: the
    values are still Python values (SQLite bind processors or PostgreSQL JSON wrapping are
    applied here, row by row); otherwise SQLite's are already applied."""
    if session.get_bind().dialect.name == "postgresql":
        return _copy_postgres(session, table, columns, tuples)
    return _executemany_sqlite(session, table, columns, tuples, per_row)


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
    session: Session,
    table: Table,
    columns: list[str],
    tuples: Iterable[Sequence[Any]],
    apply_processors: bool,
) -> int:
    """Tuples straight to sqlite3's executemany, inside the session's transaction, with each
    column's bind processor when ``apply_processors`` (as ``insert(table)`` would)."""
    dialect = session.get_bind().dialect
    processors: list[tuple[int, Callable[[Any], Any]]] = []
    if apply_processors:
        for i, name in enumerate(columns):
            process = _sqlite_processor(table, name, dialect)
            if process is not None:
                processors.append((i, process))
    dbapi = _driver_connection(session)
    column_sql = ", ".join(f'"{c}"' for c in columns)
    sql = f'INSERT INTO "{table.name}" ({column_sql}) VALUES ({", ".join("?" * len(columns))})'
    cursor = dbapi.cursor()
    count = 0
    iterator = iter(tuples)
    try:
        while True:
            batch = list(islice(iterator, _CHUNK))
            if not batch:
                break
            if processors:
                batch = [_processed(values, processors) for values in batch]
            cursor.executemany(sql, batch)
            count += len(batch)
    finally:
        cursor.close()
    return count


def _processed(
    values: Sequence[Any], processors: list[tuple[int, Callable[[Any], Any]]]
) -> list[Any]:
    out = list(values)
    for i, process in processors:
        out[i] = process(out[i])
    return out


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


def _chain(
    first: Mapping[str, Any], rest: Iterable[Mapping[str, Any]]
) -> Iterable[Mapping[str, Any]]:
    yield first
    yield from rest
