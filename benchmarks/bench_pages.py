"""Page and fragment latency of the explorer against a store the size of a real run.

The store is made by the trainer itself: ``benchmarks/configs/pages.toml`` (the explorer test
fixture's 120 real human proteins with structures, the real mini ESM2 and its layer-3 neurons,
plus one residue-level TopK SAE of ``--features`` latents, default 10,240) run through
ingest, embed, train, analyze, GO, explain and publish, with its data directory under
``data/bench``. Explanations and their scores come from the local fake of the Anthropic API
(tests/fake_anthropic.py), so the pages show explanation sections as a run with an API key
does. The work directory is kept (``data/bench/data/runs/bench-pages-N``): a rerun at the
same size reuses every stage's output and the published store. A first build at the default
size took 230 s on 2 shared cores (analyze with the effects readout 155 s, train 40 s). Then it times every page in
process (server time, no network) and prints p50/p95 latency and sequential throughput.

    PYTHONPATH=. python benchmarks/bench_pages.py [--features 10240] [--requests 60]

With ``--database-url URL --sae NAME`` it builds nothing and times the same pages against a store
a real trainer run published (e.g. configs/human-mini.toml's), on that run's dictionary NAME.

    PYTHONPATH=. python benchmarks/bench_pages.py --database-url sqlite:///run.sqlite --sae L3-residue-topk
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.settings import PROJECT_ROOT, Settings
from app.store import migrate
from app.store.engine import make_engine
from app.store.schema import Feature, GoEnrichment, Protein, ProteinFeature, Sae, TopExample

DATA = PROJECT_ROOT / "data" / "bench"
CONFIG = PROJECT_ROOT / "benchmarks" / "configs" / "pages.toml"
STAGES = ["ingest", "embed", "train", "analyze", "go", "explain", "publish"]


def build(shared: Path, n_features: int) -> tuple[str, int]:
    """Run pages.toml with an SAE of ``n_features`` latents and publish it into
    ``data/bench/pages_N.sqlite``; returns (url, the SAE's id)."""
    from tests.fake_anthropic import FakeAnthropic
    from trainer.config import load_config
    from trainer.pipeline import Pipeline

    settings = Settings(data_dir=DATA / "data", shared_dir=shared)
    url = f"sqlite:///{DATA / f'pages_{n_features}.sqlite'}"
    DATA.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(url)
    cfg = load_config(CONFIG, settings)
    sae = cfg.saes[0].model_copy(update={"n_latents": n_features})
    run = cfg.run.model_copy(update={"name": f"{cfg.run.name}-{n_features}"})
    cfg = cfg.model_copy(update={"saes": [sae], "run": run})
    saved = {k: os.environ.get(k) for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}
    t0 = time.perf_counter()
    try:
        with FakeAnthropic("sk-bench-fake") as fake:
            os.environ["ANTHROPIC_API_KEY"] = fake.api_key
            os.environ["ANTHROPIC_BASE_URL"] = fake.base_url
            run_id = Pipeline(cfg, settings, database_url=url).run(STAGES)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    print(f"built {url} (run {run.name}) in {time.perf_counter() - t0:.1f} s")
    engine = make_engine(url)
    with Session(engine) as session:
        sae_id = session.scalar(select(Sae.id).where(Sae.run_id == run_id, Sae.name == sae.name))
    engine.dispose()
    assert sae_id is not None
    return url, int(sae_id)


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
        n_examples = session.scalar(select(func.count()).where(TopExample.feature_id == fid))
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
        (f"feature page ({n_examples} examples)", f"/features/{fid}", None),
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
