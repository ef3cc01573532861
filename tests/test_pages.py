"""Server-rendered pages on the real fixture run: every page, htmx fragments, escaping, no torch.

Tests that add rows (explanations, GO hits, neighbours) work on a private copy of the store.
"""

from __future__ import annotations

import base64
import inspect
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from app.settings import PROJECT_ROOT
from app.store.codec import decode_values
from app.store.publication import renew
from app.store.schema import (
    AnalysisSummary,
    Explanation,
    ExplanationScore,
    Feature,
    FeatureNeighbor,
    GoEnrichment,
    GoTerm,
    Protein,
    Sae,
    TopExample,
)
from tests.apps import app_for

XSS = "<script>alert('x')</script> binds zinc"


def _client(url: str) -> TestClient:
    return TestClient(app_for(url))


@pytest.fixture(scope="module")
def client(demo_store: Any) -> Iterator[TestClient]:
    with _client(demo_store.url) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def enriched(
    demo_store: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    """A copy of the store with an explanation (containing <script>), scores, a GO hit with a
    parent chain, and decoder neighbours — the rows the trainer adds in a real run."""
    path = tmp_path_factory.mktemp("enriched") / "store.sqlite"
    shutil.copy(demo_store.url.removeprefix("sqlite:///"), path)
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with Session(engine) as session:
        fids = session.scalars(
            select(Feature.id).where(Feature.sae_id == demo_store.sae_id).order_by(Feature.index)
        ).all()
        target = fids[7]
        # Scores for several neurons, so the baseline rank means something: target gets 0.5.
        for rank, fid in enumerate(fids[:10]):
            score = 0.5 if fid == target else rank / 20
            text = XSS if fid == target else f"neuron {rank} tracks transmembrane helices"
            expl = Explanation(feature_id=fid, text=text, model="claude-test", prompt_hash="0" * 64)
            session.add(expl)
            session.flush()
            session.add(
                ExplanationScore(
                    explanation_id=expl.id, method="pearson", value=score, p_value=0.01, n=17
                )
            )
            session.execute(
                update(Feature).where(Feature.id == fid).values(explanation_score=score)
            )
        protein = session.scalars(
            select(Protein).where(Protein.accession == demo_store.structure_accessions[0])
        ).one()
        annotated = ";".join(c for c in (protein.go_bp, protein.go_mf, protein.go_cc) if c)
        term = next(t for g in annotated.split(";") if (t := session.get(GoTerm, g)) is not None)
        go_id = term.id
        session.add(
            GoTerm(
                id="GO:0099998",
                name="made-up parent <b>bold</b>",
                namespace=term.namespace,
                depth=1,
                level=1,
                parents=["GO:0099999"],
            )
        )
        session.add(
            GoTerm(
                id="GO:0099999",
                name="made-up root",
                namespace=term.namespace,
                depth=0,
                level=0,
                parents=[],
            )
        )
        term.parents = ["GO:0099998"]
        session.add(GoEnrichment(sae_id=demo_store.sae_id, feature_id=target, go_id=go_id, namespace=term.namespace,
                                 study_hits=5, study_size=12, pop_hits=9, pop_size=120, odds_ratio=20.0,
                                 fold_enrichment=5.55, p_value=1e-5, q_value=2e-4, p_bonferroni=1e-3,
                                 p_length=2e-5, q_length=1e-3, method="hypergeom",
                                 is_most_specific=True))  # fmt: skip
        # A second hit that the length-stratified test does not keep.
        session.add(GoEnrichment(sae_id=demo_store.sae_id, feature_id=target, go_id="GO:0099998",
                                 namespace=term.namespace, study_hits=9, study_size=12, pop_hits=40,
                                 pop_size=120, odds_ratio=6.0, fold_enrichment=2.25, p_value=1e-4,
                                 q_value=1e-3, p_bonferroni=1e-2, p_length=0.2, q_length=0.6,
                                 method="hypergeom", is_most_specific=False))  # fmt: skip
        session.execute(
            update(Feature).where(Feature.id == target).values(n_go_hits=2, n_go_hits_length=1)
        )
        for rank, nid in enumerate(fids[20:23]):
            session.add(
                FeatureNeighbor(
                    feature_id=target, neighbor_id=nid, rank=rank, cosine=0.9 - rank / 10
                )
            )
        session.commit()
    engine.dispose()
    with _client(url) as test_client:
        yield test_client, {"feature": target, "go_id": go_id, "neighbors": fids[20:23], "url": url}


def test_every_page_renders(client: TestClient, demo_store: Any) -> None:
    acc = demo_store.structure_accessions[0]
    feature_list = client.get(f"/saes/{demo_store.sae_id}/features?sort=max_activation&order=desc")
    assert feature_list.status_code == 200 and feature_list.text.count('<svg class="spark"') >= 40
    first_feature = feature_list.text.split('href="/features/')[1].split('"')[0]
    for url in [
        "/",
        f"/features/{first_feature}",
        f"/proteins/{acc}",
        "/search?q=" + acc,
        "/search",
    ]:
        page = client.get(url)
        assert page.status_code == 200, url
        assert page.text.startswith("<!doctype html>") and 'href="/encode"' in page.text
    feature = client.get(f"/features/{first_feature}").text
    assert 'class="viewer"' in feature and "/static/vendor/3Dmol-min.js" in feature
    assert "No explanation for this feature yet" in feature
    assert "neurons are the model's own basis" in feature  # no neighbours, and why


def test_fragments_for_htmx(client: TestClient, demo_store: Any) -> None:
    url = f"/saes/{demo_store.sae_id}/features?sort=density&order=desc"
    full = client.get(url)
    fragment = client.get(url, headers={"HX-Request": "true"})
    assert (
        fragment.text.lstrip().startswith('<section id="results"') and "<html" not in fragment.text
    )
    nxt = fragment.text.split('id="next-page" href="')[1].split('"')[0].replace("&amp;", "&")
    page2 = client.get(nxt, headers={"HX-Request": "true"})
    assert page2.status_code == 200 and "First page" in page2.text
    assert "<form" in full.text and "hx-push-url" in full.text
    acc = demo_store.structure_accessions[0]
    protein = client.get(f"/proteins/{acc}").text
    feature_id = protein.split('data-feature="')[2].split('"')[0]
    paint = client.get(f"/proteins/{acc}?feature={feature_id}", headers={"HX-Request": "true"})
    assert paint.text.lstrip().startswith('<section id="paint"')
    assert f'data-feature="{feature_id}"' in paint.text
    packed = paint.text.split('data-values="')[1].split('"')[0]
    assert len(decode_values(base64.b64decode(packed))) > 0


def test_structure_file_and_unknowns(client: TestClient, demo_store: Any) -> None:
    pdb = client.get("/structures/1.pdb")
    assert pdb.status_code == 200 and "ATOM" in pdb.text
    assert client.get("/structures/1.cif").status_code == 404
    assert client.get("/structures/999999.pdb").status_code == 404
    # The encode page's URL for the same file (the encode API returns it) serves the same text.
    assert client.get("/encode/structure/1").text == pdb.text
    missing = client.get("/encode/structure/999999")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "no structure with id 999999"
    assert client.get("/features/999999").status_code == 404
    assert "Not found" in client.get("/proteins/NOPE").text
    assert client.get("/saes/999/features").status_code == 404
    assert client.get(f"/saes/{demo_store.sae_id}/features?cursor=junk").status_code == 422
    # Form fields arrive empty or wrong from a browser: ignored, never a 500.
    assert (
        client.get(f"/saes/{demo_store.sae_id}/features?density_min_pct=&score_min=abc").status_code
        == 200
    )


def test_explanation_is_escaped_and_sections_render(
    enriched: tuple[TestClient, dict[str, Any]],
) -> None:
    client, ids = enriched
    page = client.get(f"/features/{ids['feature']}").text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; binds zinc" in page
    assert "<script>alert" not in page
    assert f'href="/go/{ids["go_id"]}"' in page and "most specific" in page
    assert all(f'href="/features/{n}"' in page for n in ids["neighbors"])
    # 0.5 beats the nine other scores (0 .. 0.45) and ties itself: 100 %, rank 1 of 10.
    assert "100%" in page and "rank 1" in page
    go = client.get(f"/go/{ids['go_id']}").text
    assert "GO:0099998" in go and "GO:0099999" in go and "&lt;b&gt;bold&lt;/b&gt;" in go
    assert f'href="/features/{ids["feature"]}"' in go
    search = client.get("/search?q=binds zinc").text
    assert f'href="/features/{ids["feature"]}"' in search and "<script>alert" not in search
    listed = client.get("/saes/1/features?q=zinc&has_go=true").text
    assert f'href="/features/{ids["feature"]}"' in listed and "1 feature match" in listed
    # The length-stratified test: its q beside each hit, the hit it does not keep marked.
    assert "q, length-adjusted" in page and page.count("length explains it") == 1
    assert (
        "2 terms significant under the strict protocol, by q-value, 1 of them beyond what protein "
        "length explains" in page
    )
    assert "1 feature match" in client.get("/saes/1/features?q=zinc&has_go_length=true").text
    assert "0 features match" in client.get("/saes/1/features?q=zinc&has_go_length=false").text
    by_length = client.get("/api/v1/saes/1/features?sort=n_go_hits_length&order=desc").json()
    assert by_length["items"][0]["id"] == ids["feature"]
    assert by_length["items"][0]["n_go_hits_length"] == 1
    api = client.get(f"/api/v1/features/{ids['feature']}").json()
    assert api["explanation"]["text"] == XSS and api["baseline"]["n_scored"] == 10
    assert sorted(h["q_length"] for h in api["go_hits"]) == [1e-3, 0.6]
    # No GO summary in this store: the default alpha, 0.05, decides.
    explained_by_term = {h["go_id"]: h["length_explained"] for h in api["go_hits"]}
    assert explained_by_term == {ids["go_id"]: False, "GO:0099998": True}
    kept, explained = (client.get(f"/go/{g}").text for g in (ids["go_id"], "GO:0099998"))
    assert "q, length-adjusted" in kept and "length explains it" not in kept
    assert "length explains it" in explained and 'class="length-explained"' in explained


def test_length_explained_follows_each_dictionarys_go_alpha(
    enriched: tuple[TestClient, dict[str, Any]], demo_store: Any, tmp_path: Path
) -> None:
    """A hit is explained by length when its q_length reaches the alpha of its own dictionary's
    GO stage, not a fixed 0.05. On a copy of the enriched store the fixture's dictionary ran GO at
    alpha 0.1, and its second hit's q_length, 0.08, lies between 0.05 and 0.1: kept. A second
    dictionary (the same neurons, its GO stage at alpha 5e-4) has the first hit with q_length
    1e-3: explained. Then that dictionary as published before the length test: null, no tag."""
    _, ids = enriched
    path = tmp_path / "store.sqlite"
    shutil.copy(ids["url"].removeprefix("sqlite:///"), path)
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with Session(engine) as session:
        sae = session.get(Sae, demo_store.sae_id)
        feature = session.get(Feature, ids["feature"])
        hit = session.scalars(
            select(GoEnrichment).where(
                GoEnrichment.feature_id == ids["feature"], GoEnrichment.go_id == ids["go_id"]
            )
        ).one()
        assert sae is not None and feature is not None and hit.q_length == 1e-3
        strict = Sae(run_id=sae.run_id, name=f"{sae.name} (alpha 5e-4)", kind=sae.kind,
                     level=sae.level, layer=sae.layer, d_in=sae.d_in, n_latents=sae.n_latents,
                     metrics={}, config=sae.config)  # fmt: skip
        session.add(strict)
        session.flush()
        keep = {"id", "sae_id", "n_go_hits", "n_go_hits_length"}
        twin = Feature(
            **{a.key: getattr(feature, a.key) for a in Feature.__mapper__.column_attrs
               if a.key not in keep},
            sae_id=strict.id, n_go_hits=1, n_go_hits_length=0,
        )  # fmt: skip
        session.add(twin)
        session.flush()
        session.add(
            GoEnrichment(
                **{a.key: getattr(hit, a.key) for a in GoEnrichment.__mapper__.column_attrs
                   if a.key not in {"id", "sae_id", "feature_id"}},
                sae_id=strict.id, feature_id=twin.id,
            )
        )  # fmt: skip
        session.execute(
            update(GoEnrichment)
            .where(GoEnrichment.feature_id == ids["feature"], GoEnrichment.go_id == "GO:0099998")
            .values(q_length=0.08)
        )
        published = session.scalars(select(AnalysisSummary).where(
            AnalysisSummary.sae_id == sae.id, AnalysisSummary.kind == "go")).one()  # fmt: skip
        stage = published.payload  # the GO stage's summary, with its alpha changed below
        published.payload = {**stage, "config": {**stage["config"], "alpha": 0.1}}
        session.add(AnalysisSummary(sae_id=strict.id, kind="go",
                                    payload={**stage, "config": {**stage["config"], "alpha": 5e-4}}))  # fmt: skip
        session.commit()
        twin_id, strict_id, strict_name = twin.id, strict.id, strict.name
        sae_name, index = sae.name, feature.index
    try:
        with _client(url) as client:
            api = client.get(f"/api/v1/features/{ids['feature']}").json()
            assert {h["go_id"]: (h["q_length"], h["length_explained"]) for h in api["go_hits"]} == {
                ids["go_id"]: (1e-3, False),
                "GO:0099998": (0.08, False),
            }
            assert "length explains it" not in client.get(f"/features/{ids['feature']}").text
            api = client.get(f"/api/v1/features/{twin_id}").json()
            assert [(h["go_id"], h["length_explained"]) for h in api["go_hits"]] == [
                (ids["go_id"], True)
            ]
            page = client.get(f"/features/{twin_id}").text
            assert page.count("length explains it") == 1 and 'class="length-explained"' in page

            term = client.get(f"/api/v1/go/{ids['go_id']}").json()
            assert {
                (e["sae_name"], e["feature"]["id"], e["hit"]["length_explained"])
                for e in term["enriched_features"]
            } == {(sae_name, ids["feature"], False), (strict_name, twin_id, True)}
            page = client.get(f"/go/{ids['go_id']}").text
            assert page.count("length explains it") == 1
            assert f'{strict_name} #{index}</a> <span class="tag">length explains it' in page
            term = client.get("/api/v1/go/GO:0099998").json()
            assert [e["hit"]["length_explained"] for e in term["enriched_features"]] == [False]
            assert "length explains it" not in client.get("/go/GO:0099998").text

            # The second dictionary published before the length test: no q_length, no verdict.
            # (Published rows change only with a new publication id: servers cache by it.)
            with Session(engine) as session:
                session.execute(
                    update(GoEnrichment)
                    .where(GoEnrichment.sae_id == strict_id)
                    .values(p_length=None, q_length=None)
                )
                renew(session)
                session.commit()
            api = client.get(f"/api/v1/features/{twin_id}").json()
            assert [h["length_explained"] for h in api["go_hits"]] == [None]
            term = client.get(f"/api/v1/go/{ids['go_id']}").json()
            assert {e["hit"]["length_explained"] for e in term["enriched_features"]} == {
                False,
                None,
            }
            assert "length explains it" not in client.get(f"/go/{ids['go_id']}").text
    finally:
        engine.dispose()


def test_pages_do_not_import_torch(demo_store: Any) -> None:
    code = f"""
import sys
from fastapi.testclient import TestClient
from app.main import app
c = TestClient(app)
for url in ["/", "/saes/{demo_store.sae_id}/features", "/features/1", "/proteins/{demo_store.structure_accessions[0]}",
            "/search?q=kinase", "/api/v1/features/1"]:
    assert c.get(url).status_code == 200, url
print("torch" in sys.modules)
"""
    env = {
        "PROTSAE_DATABASE_URL": demo_store.url,
        "PYTHONPATH": str(PROJECT_ROOT),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(PROJECT_ROOT),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_score_sort_pages_through_scored_then_unscored(
    enriched: tuple[TestClient, dict[str, Any]], demo_store: Any, order: str
) -> None:
    client, _ = enriched
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {
            "sort": "explanation_score",
            "order": order,
            "limit": 7,
            **({"cursor": cursor} if cursor else {}),
        }
        body = client.get(f"/api/v1/saes/{demo_store.sae_id}/features", params=params).json()
        seen += body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len({f["id"] for f in seen}) == len(seen) == demo_store.n_features
    scores = [f["explanation_score"] for f in seen[:10]]
    assert None not in scores and scores == sorted(scores, reverse=order == "desc")
    assert all(f["explanation_score"] is None for f in seen[10:])


def test_a_dictionary_is_length_driven_when_shuffled_annotations_keep_half_its_hits() -> None:
    """The full corpus's GO hit rates (BH) and their length-binned permutation controls."""
    from app.queries import length_driven

    assert length_driven(94.2, 94.1)  # residue-level TopK SAE
    assert length_driven(49.7, 48.7)  # residue-level transcoder
    assert not length_driven(14.5, 6.6)  # protein-level TopK SAE, layer 3
    assert not length_driven(40.6, 10.0)  # protein-level TopK SAE, layer 1
    assert not length_driven(0.0, 0.0)


def test_structure_views_say_what_their_chain_shows(client: TestClient, demo_store: Any) -> None:
    """A 3D view is drawn only where its chain resolves the residue the feature peaks on, under a
    note naming the covered range, the share of the activation inside it and the peak residue;
    elsewhere the page says that no stored structure shows the peak instead of a grey model."""
    features = client.get(f"/api/v1/saes/{demo_store.sae_id}/features?limit=200").json()["items"]
    checked = {True: 0, False: 0}
    for item in features:
        if checked[True] and checked[False]:
            break
        body = client.get(f"/api/v1/features/{item['id']}").json()
        if not any(e["structure"] for e in body["top_examples"]):
            continue
        html = client.get(f"/features/{item['id']}").text
        articles = html.split('<article class="example"')[1:]
        assert len(articles) == len(body["top_examples"])
        for e, article in zip(body["top_examples"], articles, strict=True):
            assert f'data-accession="{e["protein"]["accession"]}"' in article
            if e["structure"] is None:
                assert "structure-note" not in article
                continue
            peak = f"{e['sequence'][e['max_position']]}{e['max_position'] + 1}"
            a, b = e["structure"]["covered_ranges"][0]
            length = e["protein"]["length"]
            assert f"Structure covers residues {a}–{b}" in article and f" of {length}" in article
            share = f"{100 * e['structure_share']:.0f}%"
            assert f"{share} of this feature&#39;s activation on this protein lies inside it" in (
                article
            )
            covered = bool(e["structure_peak_covered"])
            assert ('class="viewer"' in article) == covered
            assert f"peak residue {peak} {'covered' if covered else 'not covered'}" in article
            assert ("No stored structure of this protein resolves" in article) == (not covered)
            checked[covered] += 1
    assert checked[True] and checked[False]


def test_protein_page_paints_the_sequence_before_the_feature_list(
    client: TestClient, demo_store: Any
) -> None:
    acc = demo_store.structure_accessions[0]
    html = client.get(f"/proteins/{acc}").text
    assert html.index('<section id="paint"') < html.index("Features most active on it")
    note = html.split('id="paint-coverage">')[1].split("</p>")[0]
    assert note.startswith("Structure covers residues ") and "peak residue" in note


def test_residue_tracks_carry_the_stored_float16_bytes(client: TestClient, demo_store: Any) -> None:
    """A track is its sequence as text and the stored values packed: base64 of the very bytes
    in the store, not one span per residue (the browser paints those)."""
    engine = create_engine(demo_store.url)
    with Session(engine) as session:
        example, sequence = session.execute(
            select(TopExample, Protein.sequence)
            .join(Protein, Protein.id == TopExample.protein_id)
            .where(TopExample.bin == "top", TopExample.rank == 0)
            .limit(1)
        ).one()
    engine.dispose()
    page = client.get(f"/features/{example.feature_id}").text
    packed = base64.b64encode(example.residue_values).decode()
    assert f'data-values="{packed}">{sequence}</p>' in page
    assert "<span title=" not in page


def test_residue_runs_expand_to_the_stored_mapping(demo_store: Any) -> None:
    """The viewer's residue map as runs, expanded as static/js/explorer.js does, is the stored
    residue ids and sequence positions of every structure in the fixture (real alignments)."""
    from app.render import residue_runs
    from app.store.schema import Structure

    engine = create_engine(demo_store.url)
    with Session(engine) as session:
        structures = session.scalars(select(Structure)).all()
        assert structures
        for s in structures:
            ids: list[str] = []
            positions: list[int] = []
            runs = json.loads(residue_runs(s.residue_ids, s.sequence_positions))
            for first, pos, n in runs:
                ids += [str(first + k) if isinstance(first, int) else first for k in range(n)]
                positions += [-1 if pos < 0 else pos + k for k in range(n)]
            assert (ids, positions) == (list(s.residue_ids), list(s.sequence_positions))
            assert len(runs) < len(s.residue_ids) / 4
    engine.dispose()
    odd = json.loads(residue_runs(["1", "2", "2A", "3", "007", "8"], [0, 1, -1, -1, 5, 6]))
    assert odd == [[1, 0, 2], ["2A", -1, 1], [3, -1, 1], ["007", 5, 1], [8, 6, 1]]
    # digits that are not ASCII do not write back as the same text: runs of their own
    assert json.loads(residue_runs(["7", "٨", "9", "-1", "0"], [0, 1, 2, 3, 4])) == [
        [7, 0, 1],
        ["٨", 1, 1],
        [9, 2, 1],
        [-1, 3, 2],
    ]
    # the all-plain fast path and the one-by-one path agree (an id with a comma is not plain)
    plain_ids = [*(str(k) for k in range(5, 40)), "41", "42"]
    plain_pos = [*range(35), -1, -1]
    assert json.loads(residue_runs(plain_ids, plain_pos)) == [[5, 0, 35], [41, -1, 2]]
    assert json.loads(residue_runs([*plain_ids, "4A"], [*plain_pos, -1])) == [
        [5, 0, 35], [41, -1, 2], ["4A", -1, 1],
    ]  # fmt: skip
    assert json.loads(residue_runs(["1", "2,3"], [0, 1])) == [[1, 0, 1], ["2,3", 1, 1]]


def test_feature_list_page_has_the_apis_filters(client: TestClient, demo_store: Any) -> None:
    """Every filter of ``GET /api/v1/saes/{id}/features`` is a field of the page's form, and the
    page finds what the API finds (here the upper bound on max activation)."""
    from app.routes.api import list_features as api_list_features

    page = client.get(f"/saes/{demo_store.sae_id}/features").text
    api_filters = set(inspect.signature(api_list_features).parameters) - {
        "session",
        "sae_id",
        "sort",
        "order",
        "cursor",
        "limit",
        "density_min",
        "density_max",
    }  # the page's density bounds are in percent: density_min_pct / density_max_pct
    for name in sorted(api_filters | {"density_min_pct", "density_max_pct"}):
        assert f'name="{name}"' in page, f"the feature list page lacks the API's filter {name}"
    base = f"/api/v1/saes/{demo_store.sae_id}/features"
    values = sorted(f["max_activation"] for f in client.get(f"{base}?limit=500").json()["items"])
    bound = values[len(values) // 2]
    total = client.get(f"{base}?max_activation_max={bound}").json()["total"]
    assert 0 < total < len(values)
    listed = client.get(f"/saes/{demo_store.sae_id}/features?max_activation_max={bound}").text
    assert f"{total} features match" in listed
