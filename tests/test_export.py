"""Bulk export of a dictionary's features (CSV, JSON) with labels and GO hits, and weights."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from scipy.stats import hypergeom
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.store.schema import AnalysisSummary, Feature, GoEnrichment, GoTerm, Protein, TopExample
from tests.apps import app_for


def add_real_go_hit(url: str, sae_id: int) -> tuple[int, str, float]:
    """Test the top-bin proteins of the first feature the GO stage found no hit for against
    all stored proteins for their most over-represented GO term (hypergeometric, one-sided),
    store it and label the feature. Returns (feature index, term, p)."""
    engine = create_engine(url)
    with Session(engine) as session:
        proteins = session.scalars(select(Protein)).all()
        terms = {
            p.id: {g for col in (p.go_bp, p.go_mf, p.go_cc) if col for g in col.split(";")}
            for p in proteins
        }
        with_hits = select(GoEnrichment.feature_id).where(GoEnrichment.sae_id == sae_id)
        feature = session.scalars(
            select(Feature)
            .where(Feature.sae_id == sae_id, Feature.id.not_in(with_hits))
            .order_by(Feature.index)
            .limit(1)
        ).one()
        study = set(session.scalars(select(TopExample.protein_id).where(
            TopExample.feature_id == feature.id, TopExample.bin == "top")))  # fmt: skip
        known = {t for t in session.scalars(select(GoTerm.id))}
        best: tuple[float, str, int, int] | None = None
        for term in sorted({t for p in study for t in terms[p]} & known):
            k = sum(term in terms[p] for p in study)
            n = sum(term in terms[p] for p in terms)
            p_value = float(hypergeom.sf(k - 1, len(terms), n, len(study)))
            if best is None or p_value < best[0]:
                best = (p_value, term, k, n)
        assert best is not None
        p_value, term, k, n = best
        session.add(GoEnrichment(
            sae_id=sae_id, feature_id=feature.id, go_id=term, namespace="BP", study_hits=k,
            study_size=len(study), pop_hits=n, pop_size=len(terms),
            fold_enrichment=(k / len(study)) / (n / len(terms)), p_value=p_value,
            q_value=p_value, p_bonferroni=p_value, method="hypergeom",
        ))  # fmt: skip
        name, index = session.get(GoTerm, term).name, feature.index  # type: ignore[union-attr]
        feature.auto_label, feature.auto_label_source, feature.n_go_hits = name, "go-top-term", 1
        session.commit()
    engine.dispose()
    return index, term, p_value


@pytest.fixture(scope="module")
def export_client(
    demo_store, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, int, tuple[int, str, float]]]:  # type: ignore[no-untyped-def]
    copy = tmp_path_factory.mktemp("export") / "store.sqlite"
    shutil.copy(Path(demo_store.url.removeprefix("sqlite:///")), copy)
    url = f"sqlite:///{copy}"
    hit = add_real_go_hit(url, demo_store.sae_id)
    with TestClient(app_for(url)) as client:
        yield client, demo_store.sae_id, hit


def test_json_and_csv_agree_with_the_store(export_client) -> None:  # type: ignore[no-untyped-def]
    client, sae_id, (index, term, p_value) = export_client
    data = client.get(f"/api/v1/saes/{sae_id}/export.json").json()
    assert data["sae_name"] == "L3-residue-neurons" and data["checkpoint_sha256"].startswith(
        "d4f0b41a"
    )
    features = data["features"]
    assert [f["index"] for f in features] == list(range(data["n_latents"]))
    hit = features[index]["go_hits"][0]
    assert hit["go_id"] == term and hit["q_value"] == pytest.approx(p_value)
    assert features[index]["label"] == hit["name"]
    response = client.get(f"/api/v1/saes/{sae_id}/export.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == len(features)
    assert rows[index]["go_hits"].startswith(f"{term}|{hit['name']}|q=")
    for row, feature in zip(rows, features, strict=True):
        assert int(row["index"]) == feature["index"]
        assert float(row["max_activation"]) == pytest.approx(feature["max_activation"])


def test_length_verdict_follows_the_dictionarys_go_alpha(export_client) -> None:  # type: ignore[no-untyped-def]
    """A hit whose length-stratified q is 0.2 is "explained by length" at the default alpha
    (0.05), not under a GO stage run at alpha 0.25; without q_length there is no verdict."""
    client, sae_id, (index, term, _) = export_client
    engine = create_engine(client.app.state.settings.sqlalchemy_url)  # the served store

    def verdicts() -> tuple[float, bool | None, str]:
        data = client.get(f"/api/v1/saes/{sae_id}/export.json").json()
        hit = data["features"][index]["go_hits"][0]
        csv_hits = list(csv.DictReader(io.StringIO(
            client.get(f"/api/v1/saes/{sae_id}/export.csv").text)))[index]["go_hits"]  # fmt: skip
        assert hit["go_id"] == term
        return data["go_alpha"], hit["length_explained"], csv_hits

    alpha, explained, csv_hits = verdicts()
    assert (alpha, explained) == (0.05, None) and "length" not in csv_hits
    with Session(engine) as session:
        hit = session.scalars(select(GoEnrichment).where(
            GoEnrichment.sae_id == sae_id, GoEnrichment.go_id == term,
            GoEnrichment.feature_id == select(Feature.id).where(
                Feature.sae_id == sae_id, Feature.index == index).scalar_subquery())).one()  # fmt: skip
        hit.q_length = 0.2
        session.commit()
        alpha, explained, csv_hits = verdicts()
        assert (alpha, explained) == (0.05, True) and csv_hits.endswith(
            "|q_length=0.2|length_explained"
        )
        summary = session.scalars(select(AnalysisSummary).where(
            AnalysisSummary.sae_id == sae_id, AnalysisSummary.kind == "go")).one()  # fmt: skip
        published = summary.payload
        summary.payload = {**published, "config": {**published["config"], "alpha": 0.25}}
        session.commit()
        alpha, explained, csv_hits = verdicts()
        assert (alpha, explained) == (0.25, False) and csv_hits.endswith("|q_length=0.2")
        summary.payload = published
        hit.q_length = None
        session.commit()
    engine.dispose()


def test_neurons_have_no_weights_and_unknown_sae_404(export_client) -> None:  # type: ignore[no-untyped-def]
    client, sae_id, _ = export_client
    for suffix in ("weights.safetensors", "saelens.zip"):
        response = client.get(f"/api/v1/saes/{sae_id}/{suffix}")
        assert response.status_code == 404 and "no weights" in response.json()["error"]["message"]
    for suffix in ("export.json", "export.csv", "weights.safetensors", "saelens.zip"):
        assert client.get(f"/api/v1/saes/987654/{suffix}").status_code == 404
