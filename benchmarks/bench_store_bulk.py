"""Bulk-load throughput of the store: 1M top-example rows (per-residue float16 values) per database.

Prints rows/s for SQLite (executemany) and PostgreSQL (COPY): rows given as dicts
(``bulk_insert``), the same rows given column by column from numpy arrays as publish has them
(``bulk_insert_columns``), and for comparison the ORM one-object-per-row path on a small slice.
Each load is timed inside its own transaction, rolled back afterwards, so all start from the
same tables. Usage:

    python benchmarks/bench_store_bulk.py [--rows 1000000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.store import migrate
from app.store.bulk import bulk_insert, bulk_insert_columns, reserve_ids
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


def _columns(n: int, feature_ids: list[int], protein_ids: list[int]) -> dict[str, list[Any]]:
    """The rows of :func:`_rows` as publish builds them: whole numpy columns to lists."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 600, size=256)
    blobs = [encode_values(rng.random(int(length), dtype=np.float32)) for length in lengths]
    i = np.arange(n)
    return {
        "feature_id": np.asarray(feature_ids)[i % len(feature_ids)].tolist(),
        "protein_id": np.asarray(protein_ids)[i % len(protein_ids)].tolist(),
        "bin": np.where(i % 4 == 0, "top", np.char.add("q", (i % 4).astype(str))).tolist(),
        "rank": (i % 20).tolist(),
        "activation": ((i % 97) / 7.0).tolist(),
        "max_position": (i % 50).tolist(),
        "residue_values": [blobs[k] for k in (i % len(blobs)).tolist()],
    }


def _timed(engine: Any, load: Callable[[Session], int]) -> tuple[int, float]:
    """Rows loaded and seconds, in a transaction that is then rolled back."""
    with session_factory(engine)() as session:
        session.begin()
        start = time.perf_counter()
        count = load(session)
        session.flush()
        elapsed = time.perf_counter() - start
        session.rollback()
    return count, elapsed


def bench(url: str, n_rows: int, label: str) -> None:
    engine, fids, pids = _prepare(url)
    n_orm = min(20_000, n_rows)

    def orm(session: Session) -> int:
        session.add_all(TopExample(**row) for row in _rows(n_orm, fids, pids))
        return n_orm

    loads: dict[str, Callable[[Session], int]] = {
        "dict rows": lambda s: bulk_insert(s, TopExample, _rows(n_rows, fids, pids)),
        "columns": lambda s: bulk_insert_columns(s, TopExample, _columns(n_rows, fids, pids)),
        "ORM": orm,
    }
    rates = {}
    for name, load in loads.items():
        count, elapsed = _timed(engine, load)
        rates[name] = count / elapsed
        print(f"{label:<22} {name:<10} {count:>9,} rows in {elapsed:7.2f} s = "
              f"{rates[name]:>10,.0f} rows/s")  # fmt: skip
    print(f"{label:<22} columns / dict rows: {rates['columns'] / rates['dict rows']:.2f}x")
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
