"""Responses of published runs: ETag and Cache-Control, 304 on revalidation, gzip, the
per-process cache, and its emptying by a publish or a removal made by another process.

The cache is observed through the store: a row changed in place (which only a publish may do)
stays unseen while the publication id is unchanged, and is seen once a publish renews it.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from app.http_cache import accepts_gzip, matches
from app.queries.publication import current_token
from app.settings import get_settings
from app.store.engine import engine_for, make_engine
from app.store.publication import renew
from app.store.publish import UnknownRunError, publish_run, remove_run
from app.store.schema import Feature, Run, TopExample
from tests.test_browser import _serve


def _copy(demo_store: Any, tmp_path: Path) -> str:
    path = tmp_path / "store.sqlite"
    shutil.copy(demo_store.url.removeprefix("sqlite:///"), path)
    return f"sqlite:///{path}"


@contextmanager
def _client(url: str, **env: str) -> Iterator[TestClient]:
    mp = pytest.MonkeyPatch()
    mp.setenv("PROTSAE_DATABASE_URL", url)
    for name, value in env.items():
        mp.setenv(name, value)
    get_settings.cache_clear()
    engine_for.cache_clear()
    from app.main import create_app

    try:
        with TestClient(create_app()) as client:
            yield client
    finally:
        mp.undo()
        get_settings.cache_clear()
        engine_for.cache_clear()


def _structure_feature(engine: Engine) -> int:
    with Session(engine) as session:
        return int(
            session.scalars(
                select(TopExample.feature_id).where(TopExample.bin == "structure").limit(1)
            ).one()
        )


def _relabel(engine: Engine, feature_id: int, label: str) -> None:
    """Change a published row in place, as nothing but a publish may: the cache must hide it."""
    with Session(engine) as session, session.begin():
        session.execute(update(Feature).where(Feature.id == feature_id).values(auto_label=label))


def _publish_copy(engine: Engine, name: str) -> int:
    """Publish a second run (the first one's model and corpus, nothing trained in it)."""
    with Session(engine) as session:
        first = session.scalars(select(Run).where(Run.status == "published")).first()
        assert first is not None
        fields = {
            k: getattr(first, k) for k in ("base_model", "checkpoint_sha256", "layer", "corpus")
        }
    return publish_run(engine, Run(name=name, **fields), lambda session, run: None)


def test_published_pages_and_api_carry_validators_and_answer_304(
    demo_store: Any, tmp_path: Path
) -> None:
    url = _copy(demo_store, tmp_path)
    engine = make_engine(url)
    feature_id = _structure_feature(engine)
    with Session(engine) as session:
        token = current_token(session)
    engine.dispose()
    with _client(url) as client:
        for path in [f"/features/{feature_id}", f"/api/v1/features/{feature_id}", "/"]:
            first = client.get(path)
            assert first.status_code == 200, path
            tag = first.headers["etag"]
            assert tag.startswith(f'"{token}-') and tag.endswith('-gz"')
            assert first.headers["cache-control"] == "public, max-age=60"
            assert first.headers["vary"] == "Accept-Encoding, HX-Request"
            again = client.get(path, headers={"If-None-Match": tag})
            assert again.status_code == 304 and again.content == b""
            assert again.headers["etag"] == tag
            weak = client.get(path, headers={"If-None-Match": f'"other", W/{tag}'})
            assert weak.status_code == 304
            assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
        # Another route, or the htmx fragment of the same one, is another response.
        assert client.get(f"/features/{feature_id + 1}").headers["etag"] != tag
        page = client.get(f"/saes/{demo_store.sae_id}/features")
        fragment = client.get(f"/saes/{demo_store.sae_id}/features", headers={"HX-Request": "true"})
        assert page.headers["etag"] != fragment.headers["etag"]
        assert "<html" in page.text and "<html" not in fragment.text
        # Not published data: no validators.
        assert "etag" not in client.get("/healthz").headers
        assert "etag" not in client.get("/features/999999").headers
        assert client.get("/features/999999").status_code == 404


def test_html_and_json_are_gzipped_once_and_equal_the_plain_body(
    demo_store: Any, tmp_path: Path
) -> None:
    url = _copy(demo_store, tmp_path)
    feature_id = _structure_feature(make_engine(url))
    with _client(url) as client:
        for path, kind in [
            (f"/features/{feature_id}", "text/html"),
            (f"/api/v1/features/{feature_id}", "application/json"),
        ]:
            plain = client.get(path, headers={"Accept-Encoding": "identity"})
            assert "content-encoding" not in plain.headers
            assert plain.headers["content-type"].startswith(kind)
            raw = client.get(path, headers={"Accept-Encoding": "gzip, br"})
            assert raw.headers["content-encoding"] == "gzip"
            assert raw.text == plain.text  # httpx undid the gzip
            # At most half: the markup compresses well, the base64 float16 residue values little.
            assert int(raw.headers["content-length"]) < len(plain.content) / 2
            assert raw.headers["etag"] != plain.headers["etag"]  # each encoding its own tag
        # Outside the cached routes GZip still compresses (the static script here).
        js = client.get("/static/js/explorer.js", headers={"Accept-Encoding": "gzip"})
        assert js.headers["content-encoding"] == "gzip"
    assert accepts_gzip("gzip;q=0.5") and not accepts_gzip("gzip;q=0") and accepts_gzip("*")
    assert not accepts_gzip("identity") and not accepts_gzip("br")
    assert matches("*", '"a"') and not matches(None, '"a"') and matches('"a-gz"', '"a"')
    assert gzip.decompress(gzip.compress(b"x")) == b"x"


def test_the_cache_serves_until_a_publish_or_removal_renews_the_publication(
    demo_store: Any, tmp_path: Path
) -> None:
    url = _copy(demo_store, tmp_path)
    engine = make_engine(url)
    feature_id = _structure_feature(engine)
    with _client(url) as client:
        before = client.get(f"/features/{feature_id}")
        _relabel(engine, feature_id, "relabelled in place")
        cached = client.get(f"/features/{feature_id}")
        assert "relabelled in place" not in cached.text  # served from the cache
        assert cached.headers["etag"] == before.headers["etag"]
        _publish_copy(engine, "second-run")
        fresh = client.get(f"/features/{feature_id}")
        assert "relabelled in place" in fresh.text
        assert fresh.headers["etag"] != before.headers["etag"]
        revalidated = client.get(
            f"/features/{feature_id}", headers={"If-None-Match": before.headers["etag"]}
        )
        assert revalidated.status_code == 200
        assert "second-run" in client.get("/").text
        assert any(r["name"] == "second-run" for r in client.get("/api/v1/runs").json())
        remove_run(engine, "second-run")
        assert "second-run" not in client.get("/").text
        assert all(r["name"] != "second-run" for r in client.get("/api/v1/runs").json())
        with pytest.raises(UnknownRunError, match="no run named 'second-run'"):
            remove_run(engine, "second-run")
    engine.dispose()


def test_with_the_cache_off_every_request_renders(demo_store: Any, tmp_path: Path) -> None:
    url = _copy(demo_store, tmp_path)
    engine = make_engine(url)
    feature_id = _structure_feature(engine)
    with _client(url, PROTSAE_CACHE="false") as client:
        first = client.get(f"/features/{feature_id}")
        _relabel(engine, feature_id, "relabelled in place")
        second = client.get(f"/features/{feature_id}")
        assert "relabelled in place" in second.text
        # The validators stay: the publication id names what a publish may change.
        assert second.headers["etag"] == first.headers["etag"]
        assert second.headers["content-encoding"] == "gzip"
    engine.dispose()


def test_a_removal_by_the_cli_reaches_every_worker_of_a_server(
    demo_store: Any, tmp_path: Path
) -> None:
    """`protsae serve --workers 2` against a store; `protsae db remove-run` in another process;
    then no worker serves its cached home page with the removed run."""
    url = _copy(demo_store, tmp_path)
    engine = make_engine(url)
    _publish_copy(engine, "to-be-removed")
    engine.dispose()
    with _serve(url, workers=2) as base, httpx.Client(base_url=base) as http:
        for _ in range(24):
            assert "to-be-removed" in http.get("/").text
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        removed = subprocess.run(
            [sys.executable, "-m", "trainer.cli", "db", "remove-run", "to-be-removed", "--database-url", url],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert removed.returncode == 0, removed.stderr
        assert "removed run 'to-be-removed'" in removed.stdout
        for _ in range(24):
            assert "to-be-removed" not in http.get("/").text
        missing = subprocess.run(
            [sys.executable, "-m", "trainer.cli", "db", "remove-run", "nope", "--database-url", url],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert missing.returncode != 0 and "no run named 'nope'" in missing.stderr


def test_the_publication_id_on_each_database(migrated_engine: Engine) -> None:
    """The migration seeds it; renew changes it within the caller's transaction only."""
    with Session(migrated_engine) as session:
        seeded = current_token(session)
    assert len(seeded) == 32
    with Session(migrated_engine) as session:
        renewed = renew(session)
        session.rollback()
    with Session(migrated_engine) as session:
        assert current_token(session) == seeded != renewed
        renewed = renew(session)
        session.commit()
    with Session(migrated_engine) as session:
        assert current_token(session) == renewed
