"""Numbers and controls that say what they mean: loss recovered beside the cross-entropies it is a
ratio of (home page, Findings figure), the feature list's density filter in the table's unit
(percent), the favicon."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.findings.plots import LOSS_RECOVERED_FLOOR, FigureInputs, plot_sae_fidelity
from app.findings.render import clear_cache
from app.queries.findings import gather_findings
from app.store.schema import Feature, Sae
from tests.encode_fixtures import restore, use_store


def _client(url: str) -> Iterator[TestClient]:
    old = use_store(url)
    clear_cache()
    from app.main import create_app

    with TestClient(create_app()) as test_client:
        yield test_client
    restore(old)
    clear_cache()


@pytest.fixture(scope="module")
def client(demo_store: Any) -> Iterator[TestClient]:
    yield from _client(demo_store.url)


@pytest.fixture(scope="module")
def tiny_client(tiny_run: Any) -> Iterator[TestClient]:
    yield from _client(tiny_run.url)


def test_favicon(client: TestClient) -> None:
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # the ICO header
    home = client.get("/").text
    assert 'rel="icon" href="/favicon.ico"' in home and 'href="/static/favicon.svg"' in home
    assert client.get("/static/favicon.svg").status_code == 200


def test_density_filter_takes_percent(client: TestClient, demo_store: Any) -> None:
    engine = create_engine(demo_store.url)
    with Session(engine) as session:
        densities = sorted(
            session.scalars(select(Feature.density).where(Feature.sae_id == demo_store.sae_id))
        )
    engine.dispose()
    lo, hi = densities[len(densities) // 4], densities[3 * len(densities) // 4]
    want = sum(lo <= d <= hi for d in densities)
    assert 0 < want < len(densities)
    url = f"/saes/{demo_store.sae_id}/features"
    page = client.get(url, params={"density_min_pct": 100 * lo, "density_max_pct": 100 * hi})
    assert f"{want} features match" in page.text
    assert 'name="density_min_pct"' in page.text and "Density ≥ (%)" in page.text
    nxt = re.search(r'id="next-page" href="([^"]+)"', page.text)
    if nxt:  # the next page keeps the filter, in percent
        assert "density_min_pct=" in nxt.group(1) and "density_min=" not in nxt.group(1)


def test_loss_recovered_shows_the_cross_entropies(tiny_client: TestClient, tiny_run: Any) -> None:
    engine = create_engine(tiny_run.url)
    with Session(engine) as session:
        measured = [s for s in session.scalars(select(Sae)) if s.loss_recovered is not None]
        metrics = {s.name: dict(s.metrics) for s in measured}
    engine.dispose()
    assert measured, "the tiny run measures loss recovered"
    home = tiny_client.get("/").text
    assert "Loss recovered = (CE ablated − CE spliced) / (CE ablated − CE clean)" in home
    for name, m in metrics.items():
        row = re.search(rf">{re.escape(name)}</a>.*?</tr>", home, re.S)
        assert row, name
        gap = m["ce_zero"] - m["ce_clean"]
        assert f"of a gap of {gap:.3g} nats" in row.group(0), name
        assert f"CE clean {m['ce_clean']:.3f}" in row.group(0), name
        assert f"spliced {m['ce_spliced']:.3f}" in row.group(0), name
        ablation = "blocks skipped" if m.get("loss_recovered_ablation") else "layer zeroed"
        assert ablation in row.group(0), name
    findings = tiny_client.get(f"/runs/{tiny_run.run_id}/findings").text
    fidelity = re.search(r'id="fig-fidelity".*?</figure>', findings, re.S)
    assert fidelity and "Gap CE ablated − CE clean, nats:" in fidelity.group(0)


def test_fidelity_plot_clips_an_ill_conditioned_ratio(tiny_run: Any) -> None:
    """A transcoder whose blocks are worth little scores far below 0; its bar is clipped at the
    floor, hatched, its value printed, so the other bars keep their scale."""
    engine = create_engine(tiny_run.url)
    with Session(engine) as session:
        found = gather_findings(session, tiny_run.run_id)
    engine.dispose()
    assert found is not None
    fidelity = [dict(m) for m in found.fidelity if m.get("ce_clean") is not None]
    assert fidelity
    inputs = FigureInputs("tiny", "mini", "tiny corpus")
    worst = min(fidelity, key=lambda m: m["loss_recovered"])
    # The tiny run's protein transcoder: about −194 (the block it replaces is worth little).
    assert worst["loss_recovered"] < LOSS_RECOVERED_FLOOR, worst
    svg = plot_sae_fidelity(fidelity, inputs)
    assert f"{worst['loss_recovered']:.3g}" in svg and "clipped" in svg
    assert "gap" in svg
    others = [m for m in fidelity if m["loss_recovered"] >= LOSS_RECOVERED_FLOOR]
    assert others
    assert "clipped" not in plot_sae_fidelity(others, inputs)
