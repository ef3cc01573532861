"""The server answers: health, OpenAPI docs, the home page (empty store and with a run)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

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
