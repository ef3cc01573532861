"""The Findings and Concept pages on a trainer run with its GO and concept results (see
tests/findings_fixture.py), the ``report`` command, and a browser screenshot."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.findings import render
from app.findings.render import clear_cache
from app.settings import PROJECT_ROOT
from app.store.engine import make_engine
from app.store.publication import renew
from app.store.schema import Concept, Feature, Structure
from tests.apps import app_for
from tests.findings_fixture import FindingsStore, build_findings_store
from trainer.concepts.examples import label_index

FIGURES = ("fidelity", "go_hit_rates", "go_levels", "go_fold", "concepts")


@pytest.fixture(scope="module")
def store(
    shared_dir: Path,
    demo_store,
    tmp_path_factory: pytest.TempPathFactory,  # type: ignore[no-untyped-def]
) -> FindingsStore:
    return build_findings_store(shared_dir, demo_store, tmp_path_factory.mktemp("findings"))


@pytest.fixture(scope="module")
def client(store: FindingsStore) -> Iterator[TestClient]:
    clear_cache()
    with TestClient(app_for(store.url)) as c:
        yield c


def _figure(html: str, key: str) -> str:
    match = re.search(rf'<figure class="finding" id="fig-{key}".*?</figure>', html, re.S)
    assert match, f"figure {key} missing"
    return match.group(0)


def test_findings_page_figures(
    client: TestClient, store: FindingsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    gathered: list[int] = []
    real_gather = render.gather_findings

    def counting_gather(session: Session, run_id: int) -> object:
        gathered.append(run_id)
        return real_gather(session, run_id)

    monkeypatch.setattr(render, "gather_findings", counting_gather)
    render.clear_cache()
    r = client.get(f"/runs/{store.run_id}/findings")
    assert r.status_code == 200
    html = r.text
    for key in FIGURES:
        fig = _figure(html, key)
        assert "<svg" in fig and "</svg>" in fig
        caption = re.search(r"<figcaption.*?</figcaption>", fig, re.S).group(0)  # type: ignore[union-attr]
        assert store.run_name in caption and "esm2_t4_2M_sprot14mini" in caption
        assert "120 proteins" in caption or "chains" in caption
    assert "Explanations: none scored in this run" in html
    # GO numbers on the page are the summaries' numbers
    go = store.summaries["go"]["L3-residue-neurons"]
    assert f"{go['n_features']} features, {go['n_tests']} tests" in _figure(html, "go_hit_rates")
    # Every dictionary of a run shares one population: stated once, not per dictionary.
    population = "/".join(f"{k} {v}" for k, v in go["population_size"].items())
    go_caption = _figure(html, "go_hit_rates")
    assert go_caption.count(population) == 1 and "Annotated proteins (population)" in go_caption
    # A second view is served from the cache: the same page, nothing gathered or drawn again.
    assert client.get(f"/runs/{store.run_id}/findings").text == html
    assert gathered == [store.run_id]


def test_figure_links_resolve(client: TestClient, store: FindingsStore) -> None:
    html = client.get(f"/runs/{store.run_id}/findings").text
    concept_fig = _figure(html, "concepts")
    engine = make_engine(store.url)
    with Session(engine) as session:
        for dictionary, summary in store.summaries["concepts"].items():
            for best in summary["best_per_concept"]:
                fid = session.scalars(
                    select(Feature.id).where(
                        Feature.sae_id == store.sae_ids[dictionary],
                        Feature.index == best["feature"],
                    )
                ).one()
                assert f'href="/features/{fid}"' in concept_fig  # in the SVG and the caption
    engine.dispose()
    ids = set(re.findall(r'href="/features/(\d+)"', html))
    assert ids
    has_feature_page = any(
        getattr(r, "path", "") == "/features/{feature_id}" for r in client.app.routes
    )  # type: ignore[attr-defined]
    engine = make_engine(store.url)
    with Session(engine) as session:
        in_run = set(
            session.scalars(
                select(Feature.id).where(Feature.sae_id.in_(list(store.sae_ids.values())))
            )
        )
    engine.dispose()
    for fid in sorted(ids):
        assert int(fid) in in_run
        if has_feature_page:  # the explorer's feature page (branch ui), once merged
            assert client.get(f"/features/{fid}").status_code == 200
    for url in set(re.findall(r'href="(/concepts/[^"]+|/runs/\d+/findings/\w+\.svg)"', html)):
        assert client.get(url).status_code == 200, url


def test_not_found(client: TestClient, store: FindingsStore) -> None:
    assert client.get(f"/runs/{store.run_id + 99}/findings").status_code == 404
    assert client.get(f"/runs/{store.run_id}/findings/nope.svg").status_code == 404
    assert client.get("/concepts/no_such_concept").status_code == 404


def test_concept_page_numbers(client: TestClient, store: FindingsStore) -> None:
    for name in store.concepts:
        html = client.get(f"/concepts/{name}").text
        for dictionary, summary in store.summaries["concepts"].items():
            best = next(b for b in summary["best_per_concept"] if b["concept"] == name)
            row = re.search(rf"{re.escape(dictionary)}</a></td>.*?</tr>", html, re.S).group(0)  # type: ignore[union-attr]
            assert f"#{best['feature']}</a>" in row
            for key in ("f1_test", "precision_test", "recall_test", "site_recall_test"):
                assert f"{best[key]:.3f}" in row, (name, dictionary, key)
            assert f"{best['threshold']:.2f}" in row
        assert "neurons" in html and "features" in html


def test_concepts_index_reports_the_train_chosen_feature(
    client: TestClient, store: FindingsStore
) -> None:
    """/concepts shows, per concept, the dictionary feature chosen on train chains (the best
    train F1 over each dictionary's train-chosen feature) with its test F1 and the
    fire-everywhere test F1; no figure is a maximum over test F1."""
    html = client.get("/concepts").text
    assert "Best test F1" not in html and "Fire-everywhere F1 test" in html
    for name in store.concepts:
        entries = [
            (dictionary, b)
            for dictionary, summary in store.summaries["concepts"].items()
            for b in summary["best_per_concept"]
            if b["concept"] == name
        ]
        dictionary, b = max(entries, key=lambda e: e[1]["f1_train"])
        row = re.search(rf'href="/concepts/{re.escape(name)}">.*?</tr>', html, re.S).group(0)  # type: ignore[union-attr]
        assert f"{dictionary} " in row and f"#{b['feature']}</a>" in row
        for key in ("f1_train", "f1_test", "f1_fire_everywhere_test"):
            assert f"{b[key]:.3f}" in row, (name, key)


def test_concept_example_labels(client: TestClient, store: FindingsStore, shared_dir: Path) -> None:
    """Where a labelled chain maps onto a protein, the page states its labelled count exactly."""
    engine = make_engine(store.url)
    shown = 0
    with Session(engine) as session:
        structures = session.scalars(select(Structure)).all()
        for name in store.concepts:
            index = label_index(shared_dir / "data/residue_annotations" / f"{name}.tsv.gz")
            html = client.get(f"/concepts/{name}").text
            for st in structures:
                if st.chain_sequence not in index:
                    continue
                labels = index[st.chain_sequence][1]
                n = sum(
                    lab == "1" and 0 <= p < len(st.protein.sequence)
                    for lab, p in zip(labels, st.sequence_positions, strict=False)
                )
                acc = st.protein.accession
                if f'<a href="/proteins/{acc}">{acc}</a>' in html:
                    assert f"{n} labelled residues" in html
                    assert len(re.findall(r'class="lab l1"', html)) >= n
                    shown += 1
            assert session.scalars(select(Concept).where(Concept.name == name)).one()
    engine.dispose()
    assert shown >= 1


def test_escaping(client: TestClient, store: FindingsStore) -> None:
    engine = make_engine(store.url)
    with Session(engine) as session, session.begin():
        c = session.scalars(select(Concept).where(Concept.name == store.concepts[0])).one()
        old = c.description
        c.description = '<script>alert("x")</script> & co'
        renew(session)  # an edit in place is a new publication: cached pages are dropped
    try:
        html = client.get(f"/concepts/{store.concepts[0]}").text
        assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    finally:
        with Session(engine) as session, session.begin():
            session.scalars(
                select(Concept).where(Concept.name == store.concepts[0])
            ).one().description = old
            renew(session)
        engine.dispose()


def test_report_command(store: FindingsStore, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trainer.cli import cli

    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli,
        [
            "trainer",
            "report",
            "--run",
            store.run_name,
            "--out",
            str(out),
            "--database-url",
            store.url,
        ],
    )
    assert result.exit_code == 0, result.output
    index = (out / "index.html").read_text()
    for key in FIGURES:
        svg = (out / f"{key}.svg").read_text()
        assert svg.startswith("<?xml") and store.run_name in svg
        assert f"{key}.svg" in index
    assert store.run_name in index and "<svg" in index
    bad = CliRunner().invoke(
        cli,
        [
            "trainer",
            "report",
            "--run",
            "no-such-run",
            "--out",
            str(out),
            "--database-url",
            store.url,
        ],
    )
    assert bad.exit_code != 0 and "no-such-run" in bad.output


def _free_port() -> int:
    for port in range(8300, 8400):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port in 8300-8399")


@pytest.mark.browser
def test_findings_in_browser(store: FindingsStore) -> None:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    env = {"PROTSAE_DATABASE_URL": store.url, "PATH": "/usr/bin:/bin"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), "--log-level", "warning"],
        cwd=PROJECT_ROOT, env={**env, "PYTHONPATH": str(PROJECT_ROOT)},
    )  # fmt: skip
    shots = PROJECT_ROOT / "artifacts" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                ],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/findings", timeout=60_000)
            assert page.locator("figure.finding svg").count() == len(FIGURES)
            box = page.locator("#fig-concepts svg").bounding_box()
            assert box and box["width"] > 300 and box["height"] > 150
            page.screenshot(path=str(shots / "findings.png"), full_page=True)
            page.goto(f"http://127.0.0.1:{port}/concepts/{store.concepts[1]}")
            assert page.locator("table.numbers").count() >= 2
            page.screenshot(path=str(shots / "concept.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
