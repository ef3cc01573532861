"""Publishing a run atomically: everything is written in one transaction, then marked published.

Readers filter on ``runs.status == 'published'`` and the whole load is one transaction, so a crash
at any point leaves no trace and a reader never sees half a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, delete
from sqlalchemy.orm import Session

from app.queries.stored import run_by_name, run_id_by_name
from app.store.engine import session_factory
from app.store.publication import renew
from app.store.schema import Run

# SQLite's page cache for the publishing connection (KiB): its default of 2 MiB thrashes on the
# secondary indexes of a proteome-sized run (an insert benchmark of 7.8 M protein -> feature
# rows in protein order: 233 k -> 321 k rows/s with 1 GiB). Pages are taken only as touched.
SQLITE_PUBLISH_CACHE_KIB = 1 << 20


@contextmanager
def _sqlite_cache(connection: Connection) -> Iterator[None]:
    """A large page cache on this connection while it publishes (SQLite only), then back to its
    old size before the connection returns to the pool, where the server's connections keep
    SQLite's default."""
    if connection.dialect.name != "sqlite":
        yield
        return
    previous = int(connection.exec_driver_sql("PRAGMA cache_size").scalar_one())
    connection.exec_driver_sql(f"PRAGMA cache_size = -{SQLITE_PUBLISH_CACHE_KIB}")
    connection.commit()  # end the autobegun (empty) transaction: the session begins its own
    try:
        yield
    finally:
        connection.rollback()  # nothing is pending after the session's commit or rollback
        connection.exec_driver_sql(f"PRAGMA cache_size = {previous}")
        connection.commit()


class RunExistsError(RuntimeError):
    """A published run of that name is already in the store."""


def publish_run(
    engine: Engine,
    run: Run,
    load: Callable[[Session, Run], None],
    *,
    replace: bool = False,
) -> int:
    """Insert ``run`` and everything ``load`` writes for it in one transaction; return its id.

    ``load(session, run)`` receives the flushed run (with its id) and bulk-inserts the rest.
    With ``replace`` an existing run of the same name is deleted in the same transaction.
    """
    with (
        engine.connect() as connection,
        _sqlite_cache(connection),
        session_factory(engine)(bind=connection) as session,
        session.begin(),
    ):
        existing = run_by_name(session, run.name)
        if existing is not None:
            if not replace:
                raise RunExistsError(
                    f"run {run.name!r} already exists (id {existing.id}); pass replace to overwrite"
                )
            session.execute(delete(Run).where(Run.id == existing.id))
            session.flush()
        run.status = "draft"
        session.add(run)
        session.flush()
        load(session, run)
        run.status = "published"
        run.published_at = datetime.now(UTC)
        session.flush()
        renew(session)
        return run.id


class UnknownRunError(LookupError):
    """No run of that name is in the store."""


def remove_run(engine: Engine, name: str) -> int:
    """Delete the run ``name`` and everything in it in one transaction, renewing the store's
    publication id so that every server's cache forgets it; return its id."""
    with session_factory(engine)() as session, session.begin():
        run_id = run_id_by_name(session, name)
        if run_id is None:
            raise UnknownRunError(f"no run named {name!r} in the store")
        session.execute(delete(Run).where(Run.id == run_id))
        renew(session)
        return int(run_id)
