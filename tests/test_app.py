"""The server answers: health, OpenAPI docs, the home page (empty store and with a run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.deps import get_session
from app.store import migrate
from app.store.engine import make_engine, session_factory
from app.store.publish import publish_run
from app.store.schema import Run, Sae
from tests.apps import app_for


@pytest.fixture
def client(migrated_engine: Engine) -> Iterator[TestClient]:
    with TestClient(app_for(migrated_engine.url.render_as_string(False))) as test_client:
        yield test_client


def test_health_and_docs(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert client.get("/openapi.json").json()["info"]["title"] == "ProtSAE Explorer"


def test_empty_store_home(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "no published run" in page.text
    assert client.get("/api/v1/runs").json() == []


def test_home_lists_published_runs_escaped(client: TestClient, migrated_engine: Engine) -> None:
    run = Run(name="<script>alert(1)</script>", base_model="esm2_t4_2M_sprot14mini",
              checkpoint_sha256="ab" * 32, layer=3, corpus="human", n_proteins=10)  # fmt: skip

    def load(session, run):  # type: ignore[no-untyped-def]
        session.add(Sae(run_id=run.id, name="L3-topk", kind="topk", level="protein", layer=3,
                        d_in=192, n_latents=768, k=32, fve=0.8123))  # fmt: skip

    publish_run(migrated_engine, run, load)
    page = client.get("/")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>alert(1)" not in page.text
    assert "0.812" in page.text
    runs = client.get("/api/v1/runs").json()
    assert runs[0]["saes"][0]["name"] == "L3-topk"


def test_unknown_route_uses_error_shape(client: TestClient) -> None:
    response = client.get("/api/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"]["status"] == 404


def test_static_assets_are_local(client: TestClient) -> None:
    page = client.get("/")
    assert "/static/vendor/htmx.min.js" in page.text
    assert "cdn" not in page.text.lower() and "unpkg" not in page.text.lower()


def _store_with_run(tmp_path: Path, name: str) -> str:
    """A migrated SQLite store with one published run called ``name``; its URL."""
    url = f"sqlite:///{tmp_path / f'{name}.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    run = Run(name=name, base_model="esm2_t4_2M_sprot14mini", checkpoint_sha256="cd" * 32,
              layer=3, corpus="human", n_proteins=10)  # fmt: skip
    publish_run(engine, run, lambda session, run: None)
    engine.dispose()
    return url


def test_two_apps_in_one_process_serve_their_own_store_and_settings(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Each app keeps its settings and engines on ``app.state``: nothing is shared per process."""
    migrate.upgrade(sqlite_url)
    first = app_for(sqlite_url)
    second = app_for(_store_with_run(tmp_path, "other-run"), cache=False)
    with TestClient(first) as a, TestClient(second) as b:
        assert a.get("/api/v1/runs").json() == []
        assert [r["name"] for r in b.get("/api/v1/runs").json()] == ["other-run"]
        assert a.get("/api/v1/runs").json() == []
        assert first.state.settings.cache and not second.state.settings.cache


def test_a_session_override_replaces_the_store(sqlite_url: str, tmp_path: Path) -> None:
    """``app.dependency_overrides`` swaps the store session without touching the environment."""
    migrate.upgrade(sqlite_url)
    other = make_engine(_store_with_run(tmp_path, "overridden"))
    application = app_for(sqlite_url)

    def other_session() -> Iterator[Session]:
        with session_factory(other)() as session:
            yield session

    application.dependency_overrides[get_session] = other_session
    with TestClient(application) as client:
        assert [r["name"] for r in client.get("/api/v1/runs").json()] == ["overridden"]
    other.dispose()


def test_not_found_answers_in_the_form_of_the_route(client: TestClient) -> None:
    """One handler for the query layer's NotFound: the API's JSON shape, the pages' error page
    (whatever the request accepts), the JSON shape for structure files fetched by a script, a
    page for a browser."""
    api = client.get("/api/v1/features/5")
    assert api.status_code == 404
    assert api.json() == {
        "error": {"status": 404, "message": "no feature with id 5", "detail": None}
    }
    page = client.get("/features/5")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "no feature with id 5" in page.text and "<html" in page.text
    fragment = client.get("/features/5", headers={"HX-Request": "true"})
    assert fragment.status_code == 404 and "<html" in fragment.text
    structure = client.get("/structures/5.pdb")
    assert structure.status_code == 404
    assert structure.json()["error"]["message"] == "no structure with id 5"
    worklist = client.get("/api/v1/features/5/worklist", headers={"Accept": "text/html"})
    assert worklist.status_code == 404 and worklist.json()["error"]["status"] == 404
    browser = client.get("/api/v1/go/GO:0000001", headers={"Accept": "text/html"})
    assert browser.status_code == 404 and browser.json()["error"]["message"]


def test_the_worker_runs_synchronous_routes_on_its_bounded_threads(sqlite_url: str) -> None:
    """``request_threads`` bounds the threads that run this worker's pages (CPU-bound Python:
    more threads only share the interpreter lock), set when the app starts."""
    import anyio.to_thread

    migrate.upgrade(sqlite_url)
    with TestClient(app_for(sqlite_url, request_threads=3)) as client:
        assert client.get("/").status_code == 200
        assert client.portal is not None
        tokens = client.portal.call(lambda: anyio.to_thread.current_default_thread_limiter())
        assert tokens.total_tokens == 3
