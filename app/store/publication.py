"""The store's publication id: read by servers on every cacheable request, renewed by every
transaction that changes what readers see (publishing, replacing or removing a run).

Published runs never change in place, so (publication id, route) names a response exactly: it is
the ETag, and the key of each server process's cache. A token rather than a counter, so a store
rebuilt from scratch never repeats an id a browser may still hold.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from app.store.schema import Publication

ROW_ID = 1


def renew(session: Session) -> str:
    """Give the store a new publication id inside the caller's transaction (so readers see the
    new id exactly when they see the new runs); return it."""
    token = uuid.uuid4().hex
    now = datetime.now(UTC)
    updated = session.execute(
        update(Publication).where(Publication.id == ROW_ID).values(token=token, changed_at=now)
    )
    if getattr(updated, "rowcount", 0) == 0:
        session.execute(delete(Publication))
        session.add(Publication(id=ROW_ID, token=token, changed_at=now))
        session.flush()
    return token
