"""Page and fragment latency of the explorer against a store the size of a real run.

Starts from the fixture run (real human proteins and structures, real mini-ESM2 layer-3 neuron
activations per residue; built with tests.store_fixture if missing) and publishes beside it a run
with an SAE of ``--features`` latents (default 10,240), 20 top examples each whose per-residue
values are the real neuron activations tiled (feature f reuses neuron f mod 192's examples),
explanations with scores on a third of them, GO hits, 20 decoder neighbours each, and the top 10
features per protein — all bulk-loaded with ``app.store.bulk``. Then it times every page in
process (server time, no network) and prints p50/p95 latency and sequential throughput.

    PYTHONPATH=. python benchmarks/bench_pages.py [--features 10240] [--requests 60]

With ``--database-url URL --sae NAME`` it builds nothing and times the same pages against a store
a real trainer run published (e.g. configs/human-mini.toml's), on that run's dictionary NAME.

    PYTHONPATH=. python benchmarks/bench_pages.py --database-url sqlite:///run.sqlite --sae L3-residue-topk
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.settings import PROJECT_ROOT, Settings
from app.store.bulk import bulk_insert, reserve_ids
from app.store.engine import make_engine
from app.store.publish import publish_run
from app.store.schema import (
    Explanation,
    ExplanationScore,
    Feature,
    FeatureNeighbor,
    GoEnrichment,
    GoTerm,
    Protein,
    ProteinFeature,
    Run,
    Sae,
    TopExample,
)

DATA = PROJECT_ROOT / "data" / "bench"
WORDS = ["zinc finger", "transmembrane helix", "signal peptide", "kinase domain", "coiled coil",
         "DNA binding", "disulfide-rich", "nuclear localisation", "glycine-rich loop", "olfactory receptor"]  # fmt: skip


def _source_store(shared: Path) -> Path:
    path = DATA / "fixture.sqlite"
    if not path.exists():
        from tests.store_fixture import build_store

        DATA.mkdir(parents=True, exist_ok=True)
        build_store(shared, path)
    return path


def build(shared: Path, n_features: int) -> tuple[str, int]:
    """Copy the fixture store and publish the big run into it; returns (url, big SAE id)."""
    out = DATA / f"pages_{n_features}.sqlite"
    url = f"sqlite:///{out}"
    if out.exists():
        engine = make_engine(url)
        with Session(engine) as session:
            sae_id = session.scalar(select(Sae.id).where(Sae.name == f"bench-{n_features}"))
        engine.dispose()
        if sae_id:
            return url, int(sae_id)
    shutil.copy(_source_store(shared), out)
    engine = make_engine(url)
    with Session(engine) as session:
        source_features = session.scalars(select(Feature).order_by(Feature.index)).all()
        examples: dict[int, list[TopExample]] = {}
        for ex in session.scalars(
            select(TopExample).order_by(TopExample.feature_id, TopExample.rank)
        ):
            examples.setdefault(ex.feature_id, []).append(ex)
        pf_rows = session.scalars(select(ProteinFeature)).all()
        protein_ids = session.scalars(select(Protein.id)).all()
        go_ids = session.scalars(select(GoTerm.id)).all()
    rng = np.random.default_rng(0)
    info: dict[str, int] = {}

    def load(session: Session, run: Run) -> None:
        sae = Sae(run_id=run.id, name=f"bench-{n_features}", kind="topk", level="residue", layer=3,
                  d_in=192, n_latents=n_features, k=32, fve=0.83, l0=32.0, dead_fraction=0.01)  # fmt: skip
        session.add(sae)
        session.flush()
        info["sae"] = sae.id
        fids = reserve_ids(session, Feature, n_features)
        feats, tops, expl, neigh, go = [], [], [], [], []
        eids = reserve_ids(session, Explanation, n_features // 3 + 1)
        for f, fid in enumerate(fids):
            src = source_features[f % len(source_features)]
            score = float(rng.uniform(-0.2, 0.9)) if f % 3 == 0 else None
            n_go = int(rng.integers(1, 6)) if f % 4 == 0 else 0
            feats.append({"id": fid, "sae_id": sae.id, "index": f, "density": src.density * rng.uniform(0.01, 1),
                          "n_active": src.n_active, "max_activation": src.max_activation,
                          "mean_activation": src.mean_activation, "hist_edges": src.hist_edges,
                          "hist_counts": src.hist_counts, "is_dead": f % 97 == 0, "pattern_class": None,
                          "auto_label": f"{WORDS[f % len(WORDS)]} #{f}" if score is not None else None,
                          "auto_label_source": "claude" if score is not None else None,
                          "explanation_score": score, "n_go_hits": n_go})  # fmt: skip
            kept = [e for e in examples[src.id] if e.bin != "structure"][:17]
            kept += [e for e in examples[src.id] if e.bin == "structure"][:3]
            for e in kept:
                tops.append({"feature_id": fid, "protein_id": e.protein_id, "bin": e.bin, "rank": e.rank,
                             "activation": e.activation, "max_position": e.max_position,
                             "residue_values": e.residue_values})  # fmt: skip
            if score is not None:
                eid = eids[f // 3]
                expl.append({"id": eid, "feature_id": fid, "model": "claude-bench", "prompt_hash": "0" * 64,
                             "text": f"Fires on proteins with a {WORDS[f % len(WORDS)]}; strongest near the C-terminus."})  # fmt: skip
            for r, nb in enumerate(rng.choice(n_features, 20, replace=False)):
                neigh.append(
                    {
                        "feature_id": fid,
                        "neighbor_id": fids[int(nb)],
                        "rank": r,
                        "cosine": 0.9 - r * 0.02,
                    }
                )
            for g in rng.choice(len(go_ids), n_go, replace=False):
                go.append({"sae_id": sae.id, "feature_id": fid, "go_id": go_ids[int(g)], "namespace": "BP",
                           "study_hits": 8, "study_size": 20, "pop_hits": 30, "pop_size": 120, "odds_ratio": 3.0,
                           "fold_enrichment": 1.6, "p_value": 1e-4, "q_value": float(rng.uniform(1e-6, 0.05)),
                           "p_bonferroni": 1e-3, "method": "hypergeom", "is_most_specific": True})  # fmt: skip
        bulk_insert(session, Feature, feats)
        bulk_insert(session, TopExample, tops)
        bulk_insert(session, Explanation, expl)
        bulk_insert(session, ExplanationScore, [{"explanation_id": e["id"], "method": "pearson", "value": 0.4,
                                                 "p_value": 0.01, "n": 17} for e in expl])  # fmt: skip
        bulk_insert(session, FeatureNeighbor, neigh)
        bulk_insert(session, GoEnrichment, go)
        by_src = {f.id: f.index for f in source_features}
        bulk_insert(session, ProteinFeature, [
            {"protein_id": p.protein_id, "sae_id": sae.id, "feature_id": fids[by_src[p.feature_id]],
             "rank": p.rank, "activation": p.activation, "residue_values": p.residue_values} for p in pf_rows
        ])  # fmt: skip
        info["n_top"] = len(tops)

    run = Run(name=f"bench-pages-{n_features}", base_model="esm2_t4_2M_sprot14mini", checkpoint_sha256="0" * 64,
              layer=3, corpus="human_sprot2014 (fixture proteins)", n_proteins=len(protein_ids))  # fmt: skip
    t0 = time.perf_counter()
    publish_run(engine, run, load)
    print(
        f"built {out.name}: {n_features} features, {info['n_top']} top examples in {time.perf_counter() - t0:.1f} s"
    )
    engine.dispose()
    return url, info["sae"]


def existing_sae(url: str, name: str) -> int:
    """The id of the newest published dictionary called ``name`` in the store at ``url``."""
    engine = make_engine(url)
    with Session(engine) as session:
        sae_id = session.scalar(select(Sae.id).where(Sae.name == name).order_by(Sae.id.desc()))
    engine.dispose()
    if sae_id is None:
        raise SystemExit(f"no dictionary named {name!r} in {url}")
    return int(sae_id)


def _time(
    client: Any, url: str, n: int, headers: dict[str, str] | None = None
) -> tuple[float, float, float, int]:
    client.get(url, headers=headers)  # warm
    times = []
    size = 0
    for _ in range(n):
        t0 = time.perf_counter()
        response = client.get(url, headers=headers)
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, (url, response.status_code)
        size = len(response.content)
    times.sort()
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    return statistics.median(times), p95, 1000 * n / sum(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=10_240)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--shared", type=Path, default=PROJECT_ROOT.parent / "shared")
    parser.add_argument("--database-url", help="time an existing store instead of building one")
    parser.add_argument("--sae", help="with --database-url: the dictionary's name in its run")
    args = parser.parse_args()
    if args.database_url:
        if not args.sae:
            parser.error("--database-url needs --sae NAME")
        url, sae_id = args.database_url, existing_sae(args.database_url, args.sae)
    else:
        url, sae_id = build(args.shared, args.features)
    from fastapi.testclient import TestClient

    from app.main import create_app

    client = TestClient(create_app(Settings(database_url=url)))
    engine = make_engine(url)
    with Session(engine) as session:
        # The richest feature: explained if any are (a real run without an API key has none),
        # with GO hits and an example that has a structure (any top example in a run published
        # without structures, e.g. configs/full-mini-cpu.toml's).
        fid, acc = None, None
        for example_bin in ("structure", "top"):
            fid = session.scalar(
                select(Feature.id).join(TopExample, TopExample.feature_id == Feature.id)
                .where(Feature.sae_id == sae_id, Feature.n_go_hits > 0, TopExample.bin == example_bin)
                .order_by(Feature.explanation_score.is_(None), Feature.index.desc()).limit(1)
            )  # fmt: skip
            if fid is not None:
                acc = session.scalar(
                    select(Protein.accession).join(TopExample, TopExample.protein_id == Protein.id)
                    .where(TopExample.feature_id == fid, TopExample.bin == example_bin).limit(1)
                )  # fmt: skip
                break
        if fid is None:
            raise SystemExit(f"dictionary {sae_id} has no feature with GO hits and examples")
        go_id = session.scalar(
            select(GoEnrichment.go_id).where(GoEnrichment.feature_id == fid).limit(1)
        )
        n_features = session.scalar(select(Sae.n_latents).where(Sae.id == sae_id))
        pf = session.scalar(select(ProteinFeature.feature_id).join(Protein, Protein.id == ProteinFeature.protein_id)
                            .where(Protein.accession == acc, ProteinFeature.sae_id == sae_id, ProteinFeature.rank == 3))  # fmt: skip
    engine.dispose()
    deep = client.get(
        f"/api/v1/saes/{sae_id}/features", params={"sort": "density", "order": "desc", "limit": 500}
    )
    cursor = deep.json()["next_cursor"]
    for _ in range(8):  # ~4,500 features deep, or the last full page of a smaller dictionary
        after = client.get(f"/api/v1/saes/{sae_id}/features",
                           params={"sort": "density", "order": "desc", "limit": 500, "cursor": cursor}).json()["next_cursor"]  # fmt: skip
        if after is None:
            break
        cursor = after
    if cursor is None:
        raise SystemExit(f"dictionary {sae_id} has under 500 features: nothing to page through")
    htmx = {"HX-Request": "true"}
    base = f"/saes/{sae_id}/features"
    cases = [
        ("home", "/", None),
        ("feature list", base, None),
        (
            "feature list: score desc, has GO",
            f"{base}?sort=explanation_score&order=desc&has_go=true",
            None,
        ),
        ("feature list: text search", f"{base}?q=zinc", None),
        (
            "fragment: list deep page (cursor)",
            f"{base}?sort=density&order=desc&cursor={cursor}",
            htmx,
        ),
        (
            "fragment: list filter",
            f"{base}?density_min=0.1&density_max=0.5&sort=max_activation&order=desc",
            htmx,
        ),
        ("feature page (20 examples)", f"/features/{fid}", None),
        ("protein page", f"/proteins/{acc}", None),
        ("fragment: protein paint", f"/proteins/{acc}?feature={pf}", htmx),
        ("GO term page", f"/go/{go_id}", None),
        ("search page", "/search?q=kinase", None),
        ("fragment: search", f"/search?q={acc}", htmx),
        ("API feature detail", f"/api/v1/features/{fid}", None),
        (
            "API feature list",
            f"/api/v1/saes/{sae_id}/features?sort=explanation_score&order=desc",
            None,
        ),
    ]
    print(
        f"\n{args.requests} sequential requests each, in process; SAE {sae_id}"
        f" with {n_features} features"
    )
    print(f"{'page':<38}{'p50 ms':>9}{'p95 ms':>9}{'req/s':>9}{'KiB':>8}")
    for name, path, headers in cases:
        p50, p95, rps, size = _time(client, path, args.requests, headers)
        print(f"{name:<38}{p50:>9.1f}{p95:>9.1f}{rps:>9.0f}{size / 1024:>8.0f}")


if __name__ == "__main__":
    main()
