"""The read half of the REST API on the real fixture run: filters, cursor pagination, details, errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.store.codec import decode_values
from app.store.schema import Feature, Protein, Structure, TopExample
from app.structure_coverage import best_chain
from tests.apps import app_for


@pytest.fixture(scope="module")
def client(demo_store: Any) -> Iterator[TestClient]:
    with TestClient(app_for(demo_store.url)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def features(demo_store: Any) -> list[dict[str, Any]]:
    engine = create_engine(demo_store.url)
    with Session(engine) as session:
        rows = session.scalars(select(Feature).where(Feature.sae_id == demo_store.sae_id)).all()
        out = [{"id": f.id, "density": f.density, "max_activation": f.max_activation,
                "is_dead": f.is_dead, "n_go_hits": f.n_go_hits, "index": f.index} for f in rows]  # fmt: skip
    engine.dispose()
    return out


def _walk(client: TestClient, sae_id: int, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/api/v1/saes/{sae_id}/features", params=query)
        assert page.status_code == 200, page.text
        body = page.json()
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


def test_runs_and_saes(client: TestClient, demo_store: Any) -> None:
    runs = client.get("/api/v1/runs").json()
    assert [r["id"] for r in runs] == [demo_store.run_id]
    saes = client.get("/api/v1/saes").json()
    assert demo_store.sae_id in [s["id"] for s in saes]
    sae = client.get(f"/api/v1/saes/{demo_store.sae_id}").json()
    assert sae["n_features"] == demo_store.n_features and sae["kind"] == "neurons"


@pytest.mark.parametrize(
    ("sort", "order"), [("index", "asc"), ("max_activation", "desc"), ("density", "asc")]
)
def test_cursor_pagination_visits_every_feature_once_in_order(
    client: TestClient, demo_store: Any, sort: str, order: str
) -> None:
    items = _walk(client, demo_store.sae_id, sort=sort, order=order, limit=17)
    assert len(items) == demo_store.n_features
    assert len({i["id"] for i in items}) == demo_store.n_features
    keys = [(i[sort], i["id"]) for i in items]
    assert keys == sorted(keys, reverse=(order == "desc"))


def test_filters_match_the_stored_columns(
    client: TestClient, demo_store: Any, features: list[dict[str, Any]]
) -> None:
    densities = sorted(f["density"] for f in features)
    lo, hi = densities[len(densities) // 4], densities[3 * len(densities) // 4]
    got = _walk(client, demo_store.sae_id, density_min=lo, density_max=hi, limit=50)
    want = {f["id"] for f in features if lo <= f["density"] <= hi}
    assert {i["id"] for i in got} == want and 0 < len(want) < len(features)
    top = sorted(f["max_activation"] for f in features)[-10]
    got = _walk(client, demo_store.sae_id, max_activation_min=top)
    assert {i["id"] for i in got} == {f["id"] for f in features if f["max_activation"] >= top}
    dead = _walk(client, demo_store.sae_id, dead=True)
    assert {i["id"] for i in dead} == {f["id"] for f in features if f["is_dead"]}
    first = client.get(
        f"/api/v1/saes/{demo_store.sae_id}/features", params={"has_go": False, "limit": 5}
    )
    assert first.json()["total"] == sum(f["n_go_hits"] == 0 for f in features)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"sort": "bogus"}, 422),
        ({"order": "sideways"}, 422),
        ({"cursor": "not-a-cursor"}, 422),
        ({"limit": 0}, 422),
        ({"density_min": "abc"}, 422),
    ],
)
def test_bad_parameters_get_the_error_shape(
    client: TestClient, demo_store: Any, params: dict[str, Any], status: int
) -> None:
    response = client.get(f"/api/v1/saes/{demo_store.sae_id}/features", params=params)
    assert response.status_code == status
    assert response.json()["error"]["status"] == status


def test_a_cursor_is_a_keyset_position(client: TestClient, demo_store: Any) -> None:
    """``<sort value>~<id>``: the page starts after that position in the requested order, so any
    cursor matching the schema's pattern is answered (an issued one and one written by hand)."""
    url = f"/api/v1/saes/{demo_store.sae_id}/features"
    every = _walk(client, demo_store.sae_id, sort="density", order="desc", limit=500)
    first = client.get(url, params={"sort": "density", "order": "desc", "limit": 3}).json()
    third = every[2]
    assert first["next_cursor"] == f"{third['density']!r}~{third['id']}"
    after = client.get(
        url, params={"sort": "density", "order": "desc", "cursor": first["next_cursor"]}
    ).json()
    assert [i["id"] for i in after["items"]] == [
        i["id"] for i in every[3 : 3 + len(after["items"])]
    ]
    by_hand = client.get(url, params={"sort": "index", "cursor": "9.5~0", "limit": 2}).json()
    assert [i["index"] for i in by_hand["items"]] == [10, 11]
    for bad in ("not-a-cursor", "1~", "~3", "1.5e~2", "nan~1"):
        response = client.get(url, params={"cursor": bad})
        assert response.status_code == 422 and "cursor" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "path", ["/api/v1/saes/999999", "/api/v1/saes/999999/features", "/api/v1/features/999999",
             "/api/v1/proteins/NOPE00", "/api/v1/go/GO:9999999"],
)  # fmt: skip
def test_unknown_ids_are_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["status"] == 404


def test_feature_detail_carries_the_stored_residue_values(
    client: TestClient, demo_store: Any
) -> None:
    engine = create_engine(demo_store.url)
    with Session(engine) as session:
        ex, acc = session.execute(
            select(TopExample, Protein.accession)
            .join(Protein, TopExample.protein_id == Protein.id)
            .where(TopExample.bin == "top", TopExample.rank == 0)
            .limit(1)
        ).one()
        stored = decode_values(ex.residue_values).tolist()
        feature_id = ex.feature_id
    engine.dispose()
    body = client.get(f"/api/v1/features/{feature_id}").json()
    first = next(e for e in body["top_examples"] if e["bin"] == "top" and e["rank"] == 0)
    assert first["protein"]["accession"] == acc
    assert first["values"] == pytest.approx(stored)
    assert len(first["values"]) == len(first["sequence"])
    bins = [e["bin"] for e in body["top_examples"]]
    assert bins[0] == "top" and "structure" in bins
    with_structure = [e for e in body["top_examples"] if e["structure"]]
    assert with_structure and all(
        len(e["structure"]["residue_ids"]) == len(e["structure"]["sequence_positions"])
        for e in with_structure
    )


def test_protein_go_and_search(client: TestClient, demo_store: Any) -> None:
    accession = demo_store.structure_accessions[0]
    protein = client.get(f"/api/v1/proteins/{accession}").json()
    assert protein["protein"]["accession"] == accession and protein["structures"]
    group = protein["top_features"][0]
    assert group["sae"]["id"] == demo_store.sae_id
    assert all(len(f["values"]) == len(protein["sequence"]) for f in group["features"])
    go_id = protein["go_terms"][0]["id"]
    term = client.get(f"/api/v1/go/{go_id}").json()
    assert term["term"]["id"] == go_id
    by_go = client.get("/api/v1/search", params={"q": go_id}).json()
    assert by_go["go_terms"][0]["id"] == go_id
    by_acc = client.get("/api/v1/search", params={"q": accession.lower()}).json()
    assert by_acc["proteins"][0]["accession"] == accession
    assert client.get("/api/v1/search", params={"q": ""}).status_code == 422
    assert client.get("/api/v1/go/not-a-go-id").status_code == 422


def test_openapi_names_the_response_models(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    feature = schema["paths"]["/api/v1/features/{feature_id}"]["get"]
    ref = feature["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/FeatureDetail")
    sort = schema["paths"]["/api/v1/saes/{sae_id}/features"]["get"]["parameters"]
    sort_param = next(p for p in sort if p["name"] == "sort")
    assert "max_activation" in str(sort_param["schema"])


def test_every_structure_example_states_what_its_chain_shows(
    client: TestClient, demo_store: Any
) -> None:
    """The fixture run stores no chain per example (as runs analysed before): the API picks the
    protein's chain that resolves the peak, then the most activation, and says what it shows."""
    engine = create_engine(demo_store.url)
    with Session(engine) as session:
        chains: dict[str, list[Structure]] = {}
        for s, acc in session.execute(
            select(Structure, Protein.accession).join(Protein, Structure.protein_id == Protein.id)
        ):
            chains.setdefault(acc, []).append(s)
    engine.dispose()
    seen, missed = 0, 0
    for feature_id in sorted(e["id"] for e in _walk(client, demo_store.sae_id))[::8]:
        body = client.get(f"/api/v1/features/{feature_id}").json()
        for e in body["top_examples"]:
            own = chains.get(e["protein"]["accession"], [])
            assert (e["structure"] is None) == (not own)
            if not own:
                assert e["structure_share"] is None and e["structure_peak_covered"] is None
                continue
            found = best_chain(e["values"], [c.sequence_positions for c in own], e["max_position"])
            assert found is not None
            want = found[1]
            assert e["structure"]["id"] == own[found[0]].id
            assert e["structure_peak_covered"] == want.peak_covered
            assert e["structure_share"] == pytest.approx(want.activation_share)
            resolved = {p + 1 for p in e["structure"]["sequence_positions"] if p >= 0}
            runs = e["structure"]["covered_ranges"]
            assert {i for a, b in runs for i in range(a, b + 1)} == resolved
            assert e["structure"]["n_resolved"] == len(resolved)
            peak = e["max_position"]
            assert e["structure_peak_covered"] == (peak + 1 in resolved)
            seen += 1
            missed += not want.peak_covered
    assert seen > 50 and 0 < missed < seen
