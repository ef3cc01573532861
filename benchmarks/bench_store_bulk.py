"""Bulk-load throughput of the store: 1M top-example rows (per-residue float16 values) per database.

Prints rows/s for SQLite (executemany) and PostgreSQL (COPY), and for comparison the ORM
one-object-per-row path on a small slice. Usage:

    python benchmarks/bench_store_bulk.py [--rows 1000000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.store import migrate
from app.store.bulk import bulk_insert, reserve_ids
from app.store.codec import encode_values
from app.store.engine import make_engine, session_factory
from app.store.schema import Feature, Protein, Run, Sae, TopExample

N_PROTEINS = 2_000
N_FEATURES = 50_000


def _rows(n: int, feature_ids: list[int], protein_ids: list[int]) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 600, size=256)
    blobs = [encode_values(rng.random(int(length), dtype=np.float32)) for length in lengths]
    for i in range(n):
        yield {
            "feature_id": feature_ids[i % len(feature_ids)],
            "protein_id": protein_ids[i % len(protein_ids)],
            "bin": "top" if i % 4 == 0 else f"q{i % 4}",
            "rank": i % 20,
            "activation": float(i % 97) / 7.0,
            "max_position": i % 50,
            "residue_values": blobs[i % len(blobs)],
        }


def _prepare(url: str) -> tuple[Any, list[int], list[int]]:
    migrate.upgrade(url)
    engine = make_engine(url)
    with session_factory(engine)() as session, session.begin():
        run = Run(name=f"bench-{uuid.uuid4().hex[:6]}", base_model="bench", checkpoint_sha256="0",
                  layer=0, corpus="bench")  # fmt: skip
        session.add(run)
        session.flush()
        sae = Sae(run_id=run.id, name="bench", kind="topk", level="residue", layer=0, d_in=8,
                  n_latents=N_FEATURES)  # fmt: skip
        session.add(sae)
        session.flush()
        pids = reserve_ids(session, Protein, N_PROTEINS)
        bulk_insert(session, Protein, ({"id": p, "accession": f"B{p}", "length": 10,
                                        "sequence": "M" * 10} for p in pids))  # fmt: skip
        fids = reserve_ids(session, Feature, N_FEATURES)
        bulk_insert(session, Feature, ({"id": f, "sae_id": sae.id, "index": i, "density": 0.0,
                                        "n_active": 0, "max_activation": 0.0,
                                        "mean_activation": 0.0, "hist_edges": [],
                                        "hist_counts": [], "is_dead": False, "n_go_hits": 0}
                                       for i, f in enumerate(fids)))  # fmt: skip
    return engine, fids, pids


def bench(url: str, n_rows: int, label: str) -> None:
    engine, fids, pids = _prepare(url)
    start = time.perf_counter()
    with session_factory(engine)() as session, session.begin():
        count = bulk_insert(session, TopExample, _rows(n_rows, fids, pids))
    elapsed = time.perf_counter() - start
    print(
        f"{label:<28} bulk   {count:>9,} rows in {elapsed:7.2f} s = {count / elapsed:>10,.0f} rows/s"
    )
    n_orm = min(20_000, n_rows)
    start = time.perf_counter()
    with session_factory(engine)() as session, session.begin():
        for row in _rows(n_orm, fids, pids):
            session.add(TopExample(**row))
    elapsed_orm = time.perf_counter() - start
    print(
        f"{label:<28} ORM    {n_orm:>9,} rows in {elapsed_orm:7.2f} s = {n_orm / elapsed_orm:>10,.0f} rows/s"
    )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", default=os.environ.get("PROTSAE_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench(f"sqlite:///{tmp}/bench.sqlite", args.rows, "SQLite (executemany)")
    if args.postgres:
        base = make_url(args.postgres).set(drivername="postgresql+psycopg")
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(base)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = base.update_query_dict({"options": f"-csearch_path={schema}"})
            bench(url.render_as_string(hide_password=False), args.rows, "PostgreSQL (COPY)")
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
