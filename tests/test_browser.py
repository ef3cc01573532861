"""Headless Chromium (Debian's, driven by Playwright) against a live server on the fixture store.

Checks what only a browser can: residue shading equals the stored values, the 3D canvas is drawn,
htmx pagination swaps without a reload, search works. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.render import level
from app.settings import PROJECT_ROOT
from app.store.codec import decode_values
from app.store.schema import Feature, Protein, ProteinFeature, Sae, TopExample

pytestmark = pytest.mark.browser
SHOTS = PROJECT_ROOT / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _serve(database_url: str, workers: int | None = None) -> Iterator[str]:
    """uvicorn in a subprocess on a free port, reading ``database_url``; its base URL. With
    ``workers``, started as a user does: ``protsae serve --workers N``."""
    if not (PROJECT_ROOT / "static/vendor/3Dmol-min.js").exists():
        pytest.fail("static/vendor is empty: run ./scripts/install-assets.sh")
    port = _free_port()
    env = {**os.environ, "PROTSAE_DATABASE_URL": database_url, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    if workers is not None:
        command = [
            sys.executable,
            "-m",
            "trainer.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
    proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("server did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(demo_store: Any) -> Iterator[str]:
    with _serve(demo_store.url) as base:
        yield base


@pytest.fixture(scope="module")
def tiny_server(tiny_run: Any) -> Iterator[str]:
    """The explorer on the tiny trainer run's store: trained SAEs, so feature maps."""
    with _serve(tiny_run.url) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    yield tab
    context.close()


def _structure_feature(server: str, url: str) -> tuple[int, str, list[float], float, int]:
    """A feature whose first 'structure' example is drawn in 3D (its chain resolves the peak):
    its id, the protein, the stored values, the scale and the peak's 0-based position."""
    engine = create_engine(url)
    with Session(engine) as session:
        rows = session.execute(
            select(TopExample, Protein.accession, Feature.max_activation, Feature.id)
            .join(Protein, TopExample.protein_id == Protein.id)
            .join(Feature, TopExample.feature_id == Feature.id)
            .where(TopExample.bin == "structure", TopExample.rank == 0, Feature.max_activation > 0)
            .order_by(Feature.id)
        ).all()
        for ex, acc, fmax, fid in rows:
            body = httpx.get(f"{server}/api/v1/features/{fid}", timeout=30).json()
            first = next(e for e in body["top_examples"] if e["bin"] == "structure")
            if first["structure_peak_covered"]:
                values = decode_values(ex.residue_values).tolist()
                engine.dispose()
                return int(fid), str(acc), values, float(fmax), int(ex.max_position)
    engine.dispose()
    raise AssertionError("no structure example whose chain resolves its peak")


def _non_background(png: bytes) -> int:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(int)
    return int((np.abs(pixels - 255).sum(axis=1) > 30).sum())


def test_feature_page_shading_and_structure(server: str, page: Any, demo_store: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    feature_id, accession, values, scale, peak = _structure_feature(server, demo_store.url)
    page.goto(f"{server}/features/{feature_id}")
    page.screenshot(path=str(SHOTS / "feature_top.png"))
    track = page.locator(f'#bin-structure article[data-accession="{accession}"] p.track').first
    spans = track.locator("span").evaluate_all(
        "els => els.map(e => [e.textContent, e.className, e.getAttribute('title')])"
    )
    assert len(spans) == len(values)
    # The packed values decode to the stored float16 values exactly.
    assert track.evaluate("el => window.protsae.decodeValues(el.dataset.values)") == values
    colours = track.locator("span").evaluate_all(
        "els => els.map(e => getComputedStyle(e).backgroundColor)"
    )
    for i, ((aa, cls, title), v) in enumerate(zip(spans, values, strict=True)):
        match = re.fullmatch(r"(\w)(\d+): (\S+)", title)
        assert match and match[1] == aa and int(match[2]) == i + 1
        assert float(match[3]) == pytest.approx(v, rel=2e-3, abs=1e-3)
        step = level(v, scale)
        assert cls == (f"s{step}" if step else "")
        # The computed colour is the step's colour: darker (lower green) for higher steps.
        if step:
            green = int(re.findall(r"\d+", colours[i])[1])
            assert green == round(255 + (38 - 255) * step / 9)
    viewer = page.locator(f'#bin-structure article[data-accession="{accession}"] .viewer').first
    viewer.scroll_into_view_if_needed()
    page.wait_for_function(
        "el => el.dataset.state === 'loaded' || el.dataset.state === 'error'", arg=viewer.element_handle(),
        timeout=30_000,
    )  # fmt: skip
    assert viewer.get_attribute("data-state") == "loaded"
    png_uri = viewer.evaluate("el => el._viewer.pngURI()")
    drawn = _non_background(base64.b64decode(png_uri.split(",", 1)[1]))
    assert drawn > 2000, f"3D canvas looks blank ({drawn} non-white pixels)"
    # Residue colours on the structure come through the stored mapping, not enumeration order.
    # Each atom's colour comes through the stored mapping (residue id -> sequence position).
    checked = viewer.evaluate(
        """el => {
          const [ids, pos] = window.protsae.residueMap(el);
          const vals = window.protsae.decodeValues(el.dataset.values), scale = parseFloat(el.dataset.scale);
          const where = new Map(ids.map((r, i) => [String(r), pos[i]]));
          let n = 0, bad = 0;
          for (const a of el._viewer.getModel().selectedAtoms({chain: el.dataset.chain})) {
            if (!a.style.cartoon) continue;
            const p = where.get(String(a.resi) + (a.icode || '').trim());
            const want = window.protsae.colour(p >= 0 ? vals[p] : null, scale);
            n += 1; if (a.style.cartoon.colorfunc(a) !== want) bad += 1;
          }
          return [n, bad]; }"""
    )
    assert checked[0] > 100 and checked[1] == 0
    # The residue the feature peaks on is resolved, coloured by its value and drawn as sticks.
    peak_atoms = viewer.evaluate(
        """(el, peak) => {
          const [ids, pos] = window.protsae.residueMap(el);
          const at = new Set(ids.filter((r, i) => pos[i] === peak).map(String));
          const vals = window.protsae.decodeValues(el.dataset.values), scale = parseFloat(el.dataset.scale);
          const atoms = el._viewer.getModel().selectedAtoms({chain: el.dataset.chain})
            .filter(a => at.has(String(a.resi) + (a.icode || '').trim()));
          return [atoms.length, atoms.filter(a => a.style.stick).length,
                  [...new Set(atoms.map(a => a.style.cartoon.colorfunc(a)))],
                  window.protsae.colour(vals[peak], scale), window.protsae.colour(0, scale)]; }""",
        peak,
    )
    n_atoms, n_sticks, drawn_colours, want, blank = peak_atoms
    assert n_atoms > 0 and n_sticks == n_atoms
    assert drawn_colours == [want] and want != blank
    article = page.locator(f'#bin-structure article[data-accession="{accession}"]').first
    note = article.locator(".structure-note").inner_text()
    assert re.search(rf"peak residue [A-Z]{peak + 1} covered\.$", note), note
    assert re.match(r"Structure covers residues \d+", note) and "% of this feature" in note
    page.screenshot(path=str(SHOTS / "feature.png"), full_page=False)
    viewer.screenshot(path=str(SHOTS / "feature_structure.png"))


def test_feature_list_htmx_pagination_and_search(server: str, page: Any, demo_store: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{server}/saes/{demo_store.sae_id}/features?sort=max_activation&order=desc")
    page.evaluate("window.__marker = 'still-here'")
    first_rows = page.locator("#results tbody tr").count()
    assert first_rows == 50
    first_index = page.locator("#results tbody tr td").first.inner_text()
    page.click("#next-page")
    page.wait_for_url(re.compile(r"cursor="))
    page.wait_for_function("document.querySelector('#results .pager a') !== null")
    assert page.evaluate("window.__marker") == "still-here"  # no full reload
    assert page.locator("#results tbody tr td").first.inner_text() != first_index
    assert page.locator("#results").count() == 1  # swapped, not nested
    page.screenshot(path=str(SHOTS / "feature_list_page2.png"), full_page=False)
    # The pushed URL renders the same page without JS.
    html = httpx.get(page.url).text
    assert page.locator("#results tbody tr td").first.inner_text() in html
    # Search: a protein accession from the store, through the header form.
    accession = demo_store.structure_accessions[0]
    page.fill("#site-q", accession)
    page.press("#site-q", "Enter")
    page.wait_for_url(re.compile(r"/search\?q="))
    page.click(f'a[href="/proteins/{accession}"]')
    page.wait_for_url(re.compile(f"/proteins/{accession}"))
    page.screenshot(path=str(SHOTS / "search_to_protein.png"), full_page=False)


def test_protein_page_repaints_viewer_without_reload(
    server: str, page: Any, demo_store: Any
) -> None:
    accession = demo_store.structure_accessions[1]
    page.goto(f"{server}/proteins/{accession}")
    viewer = page.locator(".viewer").first
    viewer.click()  # keyboard/click mount works as well as scrolling
    page.wait_for_function(
        "document.querySelector('.viewer').dataset.state === 'loaded'", timeout=30_000
    )
    page.evaluate(
        "window.__marker = 1; window.__viewer = document.querySelector('.viewer')._viewer"
    )
    before = viewer.get_attribute("data-values")
    links = page.locator(".paint-choices a[data-feature]")
    links.nth(3).click()
    page.wait_for_url(re.compile(r"feature="))
    page.wait_for_function(
        "b => document.querySelector('.viewer').dataset.values !== b", arg=before
    )
    same = page.evaluate(
        "window.__marker === 1 && document.querySelector('.viewer')._viewer === window.__viewer"
    )
    assert same, "the viewer was re-created or the page reloaded"
    assert viewer.get_attribute("data-feature") == links.nth(3).get_attribute("data-feature")
    # The painted sequence sits above the fold, and its note follows the painted feature.
    paint = page.locator("#paint").bounding_box()
    assert paint is not None and paint["y"] + 60 < page.viewport_size["height"]
    assert page.locator("#paint-coverage").inner_text().startswith("Structure covers residues")
    page.screenshot(path=str(SHOTS / "protein.png"), full_page=False)


def test_feature_map_hover_highlight_and_click(tiny_server: str, page: Any, tiny_run: Any) -> None:
    """The map draws every mapped feature; the feature asked for in the URL is labelled on
    arrival; hovering a point names that feature; the highlight box and the colour choice
    work; a click opens the feature's page. No script error on the way."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    engine = create_engine(tiny_run.url)
    with Session(engine) as session:
        sae_id = session.scalars(select(Sae.id).where(
            Sae.run_id == tiny_run.run_id, Sae.name == "L3-residue-topk")).one()  # fmt: skip
        mapped = session.execute(
            select(Feature.id, Feature.index, Feature.auto_label)
            .where(Feature.sae_id == sae_id, Feature.map_x.is_not(None))
            .order_by(Feature.n_active.desc(), Feature.id)
        ).all()
    engine.dispose()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    pinned, target = mapped[0], mapped[-1]
    page.goto(f"{tiny_server}/saes/{sae_id}/map?feature={pinned.id}")
    page.wait_for_selector("#feature-map[data-state=ready]", timeout=15_000)
    container = page.locator("#feature-map")
    assert container.get_attribute("data-drawn") == str(len(mapped))
    drawn = _non_background(page.locator("#feature-map canvas").screenshot())
    assert drawn > 3 * len(mapped), f"map canvas looks blank ({drawn} pixels)"
    tip = page.locator(".map-tip")
    assert tip.is_visible() and tip.inner_text().startswith(f"#{pinned.index} ")
    page.screenshot(path=str(SHOTS / "feature_map.png"))
    # Hover the target where the page says it is drawn: the tooltip names it.
    box = page.locator("#feature-map canvas").bounding_box()
    x, y = container.evaluate(f"el => el.screenOf({target.id})")
    page.mouse.move(box["x"] + x, box["y"] + y)
    assert tip.get_attribute("data-feature") == str(target.id)
    assert tip.inner_text().startswith(f"#{target.index} {target.auto_label or '(no label)'}")
    page.fill("#map-filter", f"#{target.index}")
    assert page.locator("#map-count").inner_text() == f"1 of {len(mapped)} features match"
    page.select_option("#map-colour", "go")
    assert "GO hit beyond protein length" in page.locator("#map-legend").inner_text()
    page.screenshot(path=str(SHOTS / "feature_map_filtered.png"))
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.mouse.down()
    page.mouse.up()
    page.wait_for_url(f"**/features/{target.id}")
    assert (
        page.locator("#on-map").get_attribute("href") == f"/saes/{sae_id}/map?feature={target.id}"
    )
    assert errors == []


def test_a_proteins_features_on_the_map(tiny_server: str, page: Any, tiny_run: Any) -> None:
    """From a protein's page to the map: its most active features of a dictionary are coloured
    by their activation on it and lifted above the rest; the tooltip gives the value."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    engine = create_engine(tiny_run.url)
    with Session(engine) as session:
        sae_id = session.scalars(select(Sae.id).where(
            Sae.run_id == tiny_run.run_id, Sae.name == "L3-residue-topk")).one()  # fmt: skip
        accession, protein_id = session.execute(
            select(Protein.accession, Protein.id)
            .join(ProteinFeature, ProteinFeature.protein_id == Protein.id)
            .where(ProteinFeature.sae_id == sae_id)
            .order_by(Protein.id)
            .limit(1)
        ).one()
        top = session.execute(
            select(ProteinFeature.feature_id, ProteinFeature.activation, Feature.map_x)
            .join(Feature, Feature.id == ProteinFeature.feature_id)
            .where(ProteinFeature.protein_id == protein_id, ProteinFeature.sae_id == sae_id)
            .order_by(ProteinFeature.rank)
        ).all()
    engine.dispose()
    on_map = [(fid, act) for fid, act, x in top if x is not None]
    assert on_map, "the protein's top features include mapped ones"
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{tiny_server}/proteins/{accession}")
    page.locator(f'a.on-map[href^="/saes/{sae_id}/map#"]').click()
    page.wait_for_selector("#feature-map[data-state=ready]", timeout=15_000)
    container = page.locator("#feature-map")
    assert container.get_attribute("data-overlay") == str(len(on_map))
    assert page.locator("#map-colour").input_value() == "overlay"
    assert page.locator("#map-count").inner_text() == (
        f"{len(on_map)} of {accession}'s {len(top)} features are on the map"
    )
    assert f"activation on {accession}: 0" in page.locator("#map-legend").inner_text()
    fid, activation = on_map[0]
    box = page.locator("#feature-map canvas").bounding_box()
    x, y = container.evaluate(f"el => el.screenOf({fid})")
    page.mouse.move(box["x"] + x, box["y"] + y)
    shown = re.search(rf"activation on {accession}: (\S+)", page.locator(".map-tip").inner_text())
    assert shown and float(shown[1]) == pytest.approx(activation, rel=5e-3)
    page.screenshot(path=str(SHOTS / "feature_map_protein.png"))
    assert errors == []
