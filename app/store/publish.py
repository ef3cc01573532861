"""Publishing a run atomically: everything is written in one transaction, then marked published.

Readers filter on ``runs.status == 'published'`` and the whole load is one transaction, so a crash
at any point leaves no trace and a reader never sees half a run.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from app.store.engine import session_factory
from app.store.schema import Run


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
    with session_factory(engine)() as session, session.begin():
        existing = session.scalar(select(Run).where(Run.name == run.name))
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
        return run.id
