"""The store's publication id, read by every server process on each cacheable request (the ETag;
``app.store.publication`` renews it when what readers see changes)."""

from __future__ import annotations

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from app.store.publication import ROW_ID
from app.store.schema import Publication

_READ = select(Publication.token).where(Publication.id == ROW_ID)


def current_token(connection: Connection | Session) -> str:
    """The publication id now ("" on a store whose row is missing: then nothing is cached)."""
    return connection.execute(_READ).scalar_one_or_none() or ""
