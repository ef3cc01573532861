"""Amino-acid profiles and the labels made from them, through the whole trainer (the tiny real
run of tests/tiny_run.py) into the store, the API, the exports and the pages; features of the
random-init control dictionary are tagged wherever they are listed."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.residue_types import ALPHABET, is_detector
from app.store.engine import make_engine, session_factory
from app.store.schema import (
    AnalysisSummary,
    Feature,
    GoEnrichment,
    Protein,
    ProteinFeature,
    Sae,
)
from tests.apps import app_for
from tests.tiny_run import TinyRun
from trainer.aa_profile import BASIS_CORPUS, BASIS_EXAMPLES, load_profile


@pytest.fixture(scope="module")
def client(tiny_run: TinyRun) -> Iterator[TestClient]:
    with TestClient(app_for(tiny_run.url)) as test_client:
        yield test_client


def test_stored_profiles_are_the_analysis_profiles(tiny_run: TinyRun) -> None:
    engine = make_engine(tiny_run.url)
    with session_factory(engine)() as session:
        for sae in session.scalars(select(Sae).where(Sae.run_id == tiny_run.run_id)):
            profile = load_profile(
                tiny_run.pipeline.workdir / "analysis" / sae.name / "aa_profile.npz"
            )
            assert profile is not None, sae.name
            assert profile.basis == (BASIS_CORPUS if sae.level == "residue" else BASIS_EXAMPLES)
            shares = profile.shares()
            payload = session.scalar(
                select(AnalysisSummary.payload).where(
                    AnalysisSummary.sae_id == sae.id, AnalysisSummary.kind == "analysis"
                )
            )
            assert payload["aa_profile"]["basis"] == profile.basis
            features = session.scalars(
                select(Feature).where(Feature.sae_id == sae.id).order_by(Feature.index)
            ).all()
            profiled = [f for f in features if f.aa_profile is not None]
            assert profiled, f"{sae.name}: no feature has a profile"
            for f in profiled:
                np.testing.assert_allclose(f.aa_profile, shares[f.index], atol=6e-5)
                top = int(np.argmax(shares[f.index]))
                assert f.aa_top == ALPHABET[top] and f.aa_n_residues == profile.n_residues[f.index]
                assert f.aa_detector == is_detector(
                    float(shares[f.index, top]), float(profile.background[top]), f.aa_n_residues
                )
            # Features without any mass (dead ones) have no profile.
            assert all(f.aa_profile is None for f in features if f.is_dead)
    engine.dispose()


def test_labels_follow_the_profile_and_the_length_test(tiny_run: TinyRun) -> None:
    engine = make_engine(tiny_run.url)
    with session_factory(engine)() as session:
        features = session.scalars(select(Feature)).all()
        hits: dict[int, list[GoEnrichment]] = {}
        for hit in session.scalars(select(GoEnrichment)):
            hits.setdefault(hit.feature_id, []).append(hit)
        for f in features:
            if f.aa_detector:
                assert f.auto_label_source == "auto:aa" and "detector" in (f.auto_label or "")
            if f.auto_label_source == "auto:go":
                assert not f.aa_detector
                assert any(h.q_value < 0.05 and h.q_length is not None and h.q_length < 0.05
                           for h in hits[f.id])  # fmt: skip
            if f.auto_label_source == "auto:no-go":
                assert not f.aa_detector and any(h.q_value < 0.05 for h in hits[f.id])
                assert not any(h.q_value < 0.05 and h.q_length < 0.05 and h.fold_enrichment >= 2
                               for h in hits[f.id])  # fmt: skip
        assert any(f.auto_label_source == "auto:aa" for f in features)
    engine.dispose()


def test_api_exports_and_pages_show_the_profile(tiny_run: TinyRun, client: TestClient) -> None:
    engine = make_engine(tiny_run.url)
    with session_factory(engine)() as session:
        detector = session.scalars(select(Feature).where(Feature.aa_detector.is_(True))).first()
        other = session.scalars(select(Feature).where(Feature.aa_detector.is_(False))).first()
        assert detector is not None and other is not None
        feature_ids, sae_id = (detector.id, other.id), detector.sae_id
    engine.dispose()
    for fid in feature_ids:
        detail = client.get(f"/api/v1/features/{fid}").json()
        profile = detail["aa_profile"]
        assert [t["letter"] for t in profile["types"]] == list(ALPHABET)
        assert sum(t["share"] for t in profile["types"]) == pytest.approx(1.0, abs=2e-3)
        assert sum(t["background"] for t in profile["types"]) == pytest.approx(1.0, abs=1e-4)
        assert profile["top"]["letter"] == detail["feature"]["aa_top"]
        assert profile["detector"] == detail["feature"]["aa_detector"]
        assert f"{profile['n_residues']:,} residues" in profile["meaning"]
        html = client.get(f"/features/{fid}").text
        assert 'id="aa-h"' in html and 'class="aa-profile"' in html
        assert ("Single-type detector" in html) == profile["detector"]
    exported = client.get(f"/api/v1/saes/{sae_id}/export.json").json()
    row = next(f for f in exported["features"] if f["feature_id"] == feature_ids[0])
    assert row["aa_detector"] is True and row["label_source"] == "auto:aa"
    assert set(row["aa_profile"]) == set(ALPHABET) and exported["aa_profile_basis"]
    table = list(csv.DictReader(io.StringIO(client.get(f"/api/v1/saes/{sae_id}/export.csv").text)))
    assert {"aa_top", "aa_top_share", "aa_detector", "aa_profile"} <= set(table[0])


def test_control_features_are_tagged_where_listed(tiny_run: TinyRun, client: TestClient) -> None:
    engine = make_engine(tiny_run.url)
    with session_factory(engine)() as session:
        control = session.scalars(select(Sae).where(Sae.is_control.is_(True))).one()
        hit = session.scalars(select(GoEnrichment).where(GoEnrichment.sae_id == control.id)).first()
        labelled = session.scalars(
            select(Feature).where(Feature.sae_id == control.id, Feature.auto_label.is_not(None))
        ).first()
        live = session.execute(
            select(Feature.id).where(Feature.sae_id == control.id, Feature.n_active > 0)
        ).first()
        accession = session.scalar(
            select(Protein.accession)
            .join(ProteinFeature, ProteinFeature.protein_id == Protein.id)
            .where(ProteinFeature.sae_id == control.id)
        )
    engine.dispose()
    tag = "control (random-init)"
    assert tag in client.get(f"/saes/{control.id}/features").text
    assert live is not None and tag in client.get(f"/features/{live[0]}").text
    assert accession is not None and tag in client.get(f"/proteins/{accession}").text
    if hit is not None:
        term = client.get(f"/api/v1/go/{hit.go_id}").json()
        assert any(e["is_control"] for e in term["enriched_features"])
        assert tag in client.get(f"/go/{hit.go_id}").text
    if labelled is not None and labelled.auto_label:
        found = client.get("/api/v1/search", params={"q": labelled.auto_label[:40]}).json()
        assert any(h["is_control"] for h in found["features"])
        assert tag in client.get("/search", params={"q": labelled.auto_label[:40]}).text
