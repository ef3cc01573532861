"""Shared fixtures: real data paths, and a store on SQLite and on PostgreSQL.

PostgreSQL tests run when ``PROTSAE_TEST_POSTGRES_URL`` is set (CI sets it) and then *fail* if
the server does not answer; without it they are skipped with that reason. Each test session gets
its own PostgreSQL schema, so parallel runs never see each other's tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from app.settings import PROJECT_ROOT
from app.store import migrate
from app.store.engine import make_engine

SHARED = Path(os.environ.get("PROTSAE_SHARED_DIR", PROJECT_ROOT.parent / "shared"))
POSTGRES_ENV = "PROTSAE_TEST_POSTGRES_URL"
MINI_MODEL = Path("models/esm2_t4_2M_sprot14mini.pt")  # relative to the shared folder


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data" / "SOURCES.md").exists():
        pytest.fail(f"real data not found at {SHARED} (set PROTSAE_SHARED_DIR)")
    return SHARED


def _postgres_base_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        return None
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A migrated-nothing PostgreSQL URL whose search_path is a fresh, private schema."""
    base = _postgres_base_url()
    if base is None:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = create_engine(base)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # the variable is set: an unreachable server is a failure
        pytest.fail(f"PostgreSQL at {base} did not answer: {exc}")
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.sqlite'}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """An empty, un-migrated store URL on each database."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    return str(request.getfixturevalue(name))


@pytest.fixture
def migrated_engine(store_url: str) -> Iterator[Engine]:
    """A store at the head revision, on each database."""
    migrate.upgrade(store_url)
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def demo_store(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A small real published run in SQLite (see tests/store_fixture.py)."""
    from tests.store_fixture import build_store

    return build_store(shared_dir, tmp_path_factory.mktemp("demo") / "store.sqlite")


@pytest.fixture(scope="session")
def tiny_run(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A tiny complete trainer run, published (see tests/tiny_run.py)."""
    from tests.tiny_run import build_tiny_run

    return build_tiny_run(shared_dir, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def loaded(shared_dir: Path):  # type: ignore[no-untyped-def]
    """The real mini ESM2 model on the CPU, one thread (``app.esm`` caches it per process)."""
    import torch

    from app.esm import load_esm

    torch.set_num_threads(1)
    return load_esm(shared_dir / MINI_MODEL, device="cpu")
