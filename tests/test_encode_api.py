"""POST /api/v1/encode and the /encode page on the real demo run: same answers as the trainer
stored, every bad-input class a clear 4xx, a full queue a 503 with Retry-After."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.store.codec import decode_values
from app.store.schema import Feature, Protein, ProteinFeature
from tests.apps import app_for
from tests.encode_fixtures import encode_client  # noqa: F401

pytestmark = pytest.mark.slow


def stored_protein(url: str, accession: str) -> tuple[str, list[tuple[int, float, np.ndarray]]]:
    """A stored protein's sequence and its top features as the fixture computed them."""
    engine = create_engine(url)
    with Session(engine) as session:
        protein = session.scalars(select(Protein).where(Protein.accession == accession)).one()
        rows = session.execute(
            select(Feature.index, ProteinFeature.activation, ProteinFeature.residue_values)
            .join(Feature, Feature.id == ProteinFeature.feature_id)
            .where(ProteinFeature.protein_id == protein.id)
            .order_by(ProteinFeature.rank)
        ).all()
    engine.dispose()
    return protein.sequence, [(i, a, decode_values(v)) for i, a, v in rows]


def test_encode_matches_what_the_trainer_stored(encode_client: TestClient, demo_store) -> None:  # noqa: F811
    accession = demo_store.structure_accessions[0]
    sequence, stored = stored_protein(demo_store.url, accession)
    body = {"sae_id": demo_store.sae_id, "sequences": [sequence.lower()], "top_n": 10}
    response = encode_client.post("/api/v1/encode", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["provenance"]["checkpoint_sha256"].startswith("d4f0b41a")
    assert data["provenance"]["layer"] == 3 and data["level"] == "residue"
    (result,) = data["results"]
    assert result["sequence"] == sequence and result["length"] == len(sequence)
    assert result["quality"]["fve"] is None and "not defined" in result["quality"]["note"]
    got = result["features"]
    assert [f["index"] for f in got] == [i for i, _, _ in stored]
    for feature, (_, activation, values) in zip(got, stored, strict=True):
        assert feature["max"] == pytest.approx(activation, rel=1e-3, abs=1e-3)
        assert len(feature["values"]) == len(sequence)
        np.testing.assert_allclose(feature["values"], values, rtol=2e-3, atol=2e-2)
        assert feature["max_position"] == int(np.argmax(feature["values"]))
        assert feature["feature_id"] is not None
    match = result["match"]
    assert match["accession"] == accession and match["structures"]
    structure = encode_client.get(match["structures"][0]["url"])
    assert structure.status_code == 200 and "ATOM" in structure.text


def test_ranking_options(encode_client: TestClient, demo_store) -> None:  # noqa: F811
    sequence, _ = stored_protein(demo_store.url, demo_store.accessions[20])
    base = {"sae_id": demo_store.sae_id, "sequences": [sequence], "top_n": 1000}
    by_max = encode_client.post("/api/v1/encode", json=base).json()["results"][0]
    by_mean = encode_client.post("/api/v1/encode", json={**base, "rank_by": "mean"}).json()
    means = [f["mean"] for f in by_mean["results"][0]["features"]]
    assert means == sorted(means, reverse=True)
    maxes = [f["max"] for f in by_max["features"]]
    assert maxes == sorted(maxes, reverse=True) and len(maxes) == by_max["n_active_features"]
    hidden = encode_client.post(
        "/api/v1/encode", json={**base, "hide_dense": True, "dense_threshold": 0.9}
    ).json()["results"][0]
    assert all(f["density"] <= 0.9 for f in hidden["features"])
    dense = sum(f["density"] > 0.9 for f in by_max["features"])
    assert dense > 0 and hidden["n_hidden_dense"] == dense
    short = encode_client.post(
        "/api/v1/encode", json={**base, "top_n": 3, "include_residues": False}
    )
    assert [f["values"] for f in short.json()["results"][0]["features"]] == [None] * 3


def test_fasta_and_long_sequences(encode_client: TestClient, demo_store) -> None:  # noqa: F811
    seqs = [stored_protein(demo_store.url, a)[0] for a in demo_store.accessions[30:33]]
    fasta = "".join(
        f">sp|{a}|test\n{s}\n" for a, s in zip(demo_store.accessions[30:33], seqs, strict=True)
    )
    data = encode_client.post(
        "/api/v1/encode", json={"sae_id": demo_store.sae_id, "fasta": fasta}
    ).json()
    assert [r["id"] for r in data["results"]] == [
        f"sp|{a}|test" for a in demo_store.accessions[30:33]
    ]
    long = "".join(seqs) * 4
    long = long[:1100]
    result = encode_client.post(
        "/api/v1/encode", json={"sae_id": demo_store.sae_id, "sequences": [long], "top_n": 2}
    ).json()["results"][0]
    assert result["windowed"] and "window" in result["notes"][0]
    assert len(result["features"][0]["values"]) == 1100


def test_cache_hits_on_repeat(encode_client: TestClient, demo_store) -> None:  # noqa: F811
    sequence, _ = stored_protein(demo_store.url, demo_store.accessions[40])
    body = {"sae_id": demo_store.sae_id, "sequences": [sequence]}
    first = encode_client.post("/api/v1/encode", json=body).json()
    cache = encode_client.app.state.encoding.cache  # type: ignore[attr-defined]
    hits = cache.hits
    assert encode_client.post("/api/v1/encode", json=body).json() == first
    assert cache.hits == hits + 1


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"sequences": [""]}, 422, "empty"),
        ({"sequences": []}, 422, "empty"),
        (
            {"fasta": ">a\nMKV\n>sp|P69905\nMVLSPADKTNVKAAWGJ"},
            422,
            "record 2 (sp|P69905, line 3): invalid character 'J' at position 17",
        ),
        ({"sequences": ["MKV LLA\n"], "fasta": ">a\nMKV"}, 422, "exactly one"),
        ({"sequences": ["M" * 5000]}, 413, "limit of 4096"),
        ({"fasta": ">a\nMKV\n" * 17}, 413, "too many FASTA records: 17"),
        ({"sequences": ["MKV"], "sae_id": 99999}, 404, "no published SAE"),
        ({"sequences": ["MKV"], "rank_by": "median"}, 422, "invalid request"),
        ({"sequences": ["MKV"], "bogus": 1}, 422, "invalid request"),
    ],
)
def test_bad_input(
    encode_client: TestClient,  # noqa: F811
    demo_store,
    body: dict,
    status: int,
    needle: str,
) -> None:
    response = encode_client.post("/api/v1/encode", json={"sae_id": demo_store.sae_id, **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and needle in error["message"]


def test_malformed_and_oversized_bodies(encode_client: TestClient) -> None:  # noqa: F811
    bad_json = encode_client.post(
        "/api/v1/encode", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 422 and bad_json.json()["error"]["status"] == 422
    huge = encode_client.post("/api/v1/encode", content=b" " * 1_000_001)
    assert huge.status_code == 413 and "limit of 1000000" in huge.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(20):
            yield b" " * 100_000

    streamed = encode_client.post("/api/v1/encode", content=chunks())
    assert streamed.status_code == 413


def test_full_queue_answers_503_with_retry_after(demo_store) -> None:
    app = app_for(demo_store.url, encode_queue_size=1, encode_cache_size=0)
    seqs = [stored_protein(demo_store.url, a)[0] * 3 for a in demo_store.accessions[50:58]]

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            warm = await client.post(
                "/api/v1/encode", json={"sae_id": demo_store.sae_id, "sequences": ["MKV"]}
            )
            assert warm.status_code == 200
            return await asyncio.wait_for(asyncio.gather(*(
                client.post("/api/v1/encode", json={"sae_id": demo_store.sae_id, "sequences": [s[:1000]]})
                for s in seqs
            )), timeout=60)  # fmt: skip

    responses = asyncio.run(main())
    app.state.store.dispose()
    codes = [r.status_code for r in responses]
    assert 200 in codes and 503 in codes, codes
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers["Retry-After"]) >= 1
            assert "queue is full" in response.json()["error"]["message"]


def test_page_paints_features(encode_client: TestClient, demo_store) -> None:  # noqa: F811
    page = encode_client.get("/encode")
    assert (
        page.status_code == 200 and "<textarea" in page.text and "L3-residue-neurons" in page.text
    )
    assert "/static/js/encode.js" in page.text and "/static/vendor/3Dmol-min.js" in page.text
    sequence, stored = stored_protein(demo_store.url, demo_store.structure_accessions[1])
    form = {"sae_id": str(demo_store.sae_id), "text": f">mine\n{sequence}", "top_n": "5"}
    result = encode_client.post("/encode", data=form)
    assert result.status_code == 200
    assert 'id="encode-data"' in result.text and 'class="paint"' in result.text
    assert f"#{stored[0][0]}" in result.text and "matches" in result.text
    fragment = encode_client.post("/encode", data=form, headers={"HX-Request": "true"})
    assert "<html" not in fragment.text and 'id="results"' in fragment.text
    bad = encode_client.post("/encode", data={**form, "text": "MKXJ"})
    assert bad.status_code == 422 and "&#39;J&#39; at position 4" in bad.text
