"""Headless Chromium on the steering and variant pages, against the tiny trainer run (trained SAEs):
the page draws what the API answers (changed residues, heatmap, the structure view of a stored
protein, variant rows and their tracks), and a bad input shows the server's message in place.
Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.store.schema import Protein, Sae, Structure
from tests.test_browser import (  # noqa: F401
    SHOTS,
    _non_background,
    browser,
    page,
    tiny_server,
)

pytestmark = pytest.mark.browser


def _steerable(tiny_run: Any) -> tuple[int, str]:
    """The tiny run's residue TopK SAE and a stored protein with a structure (short enough)."""
    engine = create_engine(tiny_run.url)
    with Session(engine) as session:
        sae_id = session.scalars(select(Sae.id).where(
            Sae.run_id == tiny_run.run_id, Sae.name == "L3-residue-topk")).one()  # fmt: skip
        sequence = session.scalars(
            select(Protein.sequence)
            .join(Structure, Structure.protein_id == Protein.id)
            .where(Protein.length <= 300)
            .order_by(Protein.id)
            .limit(1)
        ).one()
    engine.dispose()
    return sae_id, sequence


def test_steering_page_draws_the_apis_answer(
    tiny_server: str,  # noqa: F811
    page: Any,  # noqa: F811
    tiny_run: Any,
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    sae_id, sequence = _steerable(tiny_run)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    feature = 3
    body = {"sae_id": sae_id, "sequence": sequence,
            "interventions": [{"feature": feature, "mode": "clamp", "value": 30.0}]}  # fmt: skip
    expected = httpx.post(f"{tiny_server}/api/v1/steer", json=body, timeout=120).json()
    page.goto(f"{tiny_server}/steer?sae_id={sae_id}&feature={feature}&sequence={quote(sequence)}")
    assert page.input_value("#sequence") == sequence
    page.select_option("#mode", "clamp")
    page.fill("#value", "30")
    page.click("#steer-form button[type=submit]")
    page.wait_for_selector("#steer-result:not([hidden])", timeout=60_000)
    assert page.locator("#steer-sequence span").count() == len(sequence)
    outlined = page.locator("#steer-sequence span.changed").count()
    assert outlined == len(expected["changed_positions"])
    assert page.locator("#changed-table tbody tr").count() == outlined
    assert page.inner_text("#steered-sequence") == expected["steered_sequence"]
    assert f"Feature {feature} of SAE {sae_id}" in page.inner_text("#steer-summary")
    heatmap = page.locator("#heatmap")
    assert heatmap.evaluate("c => c.width") >= len(sequence) * 3
    assert _non_background(heatmap.screenshot()) > 0, "the heatmap is blank"
    page.wait_for_selector("#steer-viewer:not([hidden]) canvas", timeout=20_000)
    page.screenshot(path=str(SHOTS / "steer.png"), full_page=True)
    # A residue clicked on the sequence joins the positions of the next request.
    page.fill("#positions", "all")
    page.click("#steer-sequence span[data-position='5']")
    assert page.input_value("#positions") == "5"
    # Bad input: the server's 422 message, in place.
    page.fill("#sequence", "MKT1AY")
    page.click("#steer-form button[type=submit]")
    page.wait_for_selector("#form-error:not([hidden])")
    assert "invalid character '1' at position 4" in page.inner_text("#form-error")
    assert not errors, errors


def test_variant_page_lists_variants_and_draws_their_tracks(
    tiny_server: str,  # noqa: F811
    page: Any,  # noqa: F811
    tiny_run: Any,
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    sae_id, sequence = _steerable(tiny_run)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    substitution = f"{sequence[9]}10{'W' if sequence[9] != 'W' else 'A'}"
    page.goto(f"{tiny_server}/variants?sae_id={sae_id}&sequence={quote(sequence)}")
    page.fill("#variants", f"{substitution}\ndel20_24")
    page.click("#variants-form button[type=submit]")
    page.wait_for_selector("#variants-result:not([hidden])", timeout=60_000)
    rows = page.locator("#variants-table tbody tr")
    assert rows.count() == 2
    assert rows.nth(1).inner_text().startswith("del20_24")  # no score: listed last
    assert page.locator("#variant-sequence span").count() == len(sequence)
    page.locator("#variants-table tbody tr").nth(1).click()
    assert page.locator("#variant-sequence span.deleted").count() == 5
    assert (
        page.locator("#variants-table tbody tr[aria-selected=true]")
        .inner_text()
        .startswith("del20_24")
    )
    page.screenshot(path=str(SHOTS / "variants.png"), full_page=True)
    wrong = "W1A" if sequence[0] != "W" else "A1W"
    page.fill("#variants", wrong)
    page.click("#variants-form button[type=submit]")
    page.wait_for_selector("#form-error:not([hidden])")
    assert f"{wrong}: the wild type has {sequence[0]} at 1" in page.inner_text("#form-error")
    assert not errors, errors
