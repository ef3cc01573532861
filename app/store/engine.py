"""Engines and sessions for SQLite (embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the server read while the trainer publishes; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL + foreign keys, its parent directory is created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return create_engine(url, pool_pre_ping=True)


class AppStore:
    """One web app's connections to its store: engines made on first use (creating an app
    touches nothing), disposed when the app shuts down.

    The publication id is read on the event loop with an engine of its own: with the request
    engine's pool taken by request threads the loop would wait for a connection, while those
    threads need the loop to close their sessions (a deadlock until the pool's 30 s timeout).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._engines: dict[str, Engine] = {}
        self._sessions: sessionmaker[Session] | None = None

    def _engine(self, role: str) -> Engine:
        with self._lock:
            engine = self._engines.get(role)
            if engine is None:
                engine = self._engines[role] = make_engine(self.url)
            return engine

    @property
    def engine(self) -> Engine:
        """The engine of request sessions and health checks."""
        return self._engine("requests")

    @property
    def publication_engine(self) -> Engine:
        """The engine the response cache reads the publication id with (see above)."""
        return self._engine("publication")

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            self._sessions = session_factory(self.engine)
        return self._sessions

    def dispose(self) -> None:
        """Close every pooled connection; a later use opens new ones."""
        with self._lock:
            engines, self._engines, self._sessions = list(self._engines.values()), {}, None
        for engine in engines:
            engine.dispose()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
