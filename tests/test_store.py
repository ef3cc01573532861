"""The store on SQLite and PostgreSQL: migrations, a real run round-trip, atomic publishing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.orm import Session

from app.store import migrate
from app.store.bulk import bulk_insert, bulk_insert_columns, reserve_ids
from app.store.codec import decode_values, encode_values
from app.store.engine import make_engine, session_factory
from app.store.publish import SQLITE_PUBLISH_CACHE_KIB, RunExistsError, publish_run
from app.store.schema import (
    Feature,
    GoEnrichment,
    GoTerm,
    Protein,
    Run,
    Sae,
    Structure,
    TopExample,
)
from tests.realdata import KYTE_DOOLITTLE, go_term_records, human_proteins

EXPECTED_TABLES = {
    "runs", "saes", "proteins", "structures", "features", "top_examples", "protein_features",
    "feature_neighbors", "go_terms", "go_enrichments", "explanations", "explanation_scores",
    "concepts", "concept_alignments", "analysis_summaries", "go_protocols", "go_worklist",
}  # fmt: skip


def test_migrations_round_trip(store_url: str) -> None:
    migrate.upgrade(store_url)
    engine = make_engine(store_url)
    assert set(inspect(engine).get_table_names()) >= EXPECTED_TABLES
    migrate.downgrade(store_url, "base")
    assert not EXPECTED_TABLES & set(inspect(engine).get_table_names())
    migrate.upgrade(store_url)
    assert set(inspect(engine).get_table_names()) >= EXPECTED_TABLES
    assert migrate.current_revision(store_url) is not None
    engine.dispose()


AA_COLUMNS = ("aa_profile", "aa_n_residues", "aa_top", "aa_top_share", "aa_detector")


def test_a_store_from_an_earlier_revision_upgrades_in_place(store_url: str) -> None:
    """0001 -> 0002 adds the nullable length-test columns, 0003 the feature map's coordinates,
    0004 the amino-acid profile, 0005 the features' LM effects, 0006 the GO protocols, 0007 the
    top examples' structure coverage, 0008 the worklists, 0009 the publication token, 0010 the
    domain-family enrichment, 0011 the concept examples; each downgrade removes what its revision added."""

    def columns(table: str) -> set[str]:
        engine = make_engine(store_url)
        try:
            return {c["name"] for c in inspect(engine).get_columns(table)}
        finally:
            engine.dispose()

    migrate.downgrade(store_url, "base")
    migrate.upgrade(store_url, "0001")
    assert not {"p_length", "q_length"} & columns("go_enrichments")
    assert not {"n_go_hits_length", "map_x", "map_y"} & columns("features")
    migrate.upgrade(store_url)
    assert (
        migrate.current_revision(store_url) == migrate.head_revision() == "0012_worklist_term_lists"
    )
    assert {"feature_id", "protein_id", "labels", "via"} <= columns("concept_examples")
    migrate.downgrade(store_url, "0010_domain_enrichment")
    engine = make_engine(store_url)
    assert "concept_examples" not in inspect(engine).get_table_names()
    engine.dispose()
    domain_columns = {"n_domain_hits", "n_domain_hits_length", "top_domain", "top_domain_source"}
    assert domain_columns <= columns("features")
    assert {"accession", "source", "protocol"} <= columns("domain_enrichments")
    migrate.downgrade(store_url, "0009_publication_id")
    assert not domain_columns & columns("features")
    engine = make_engine(store_url)
    assert "publication" in inspect(engine).get_table_names()
    engine.dispose()
    migrate.downgrade(store_url, "0008_worklist")
    engine = make_engine(store_url)
    assert "publication" not in inspect(engine).get_table_names()
    engine.dispose()
    assert {"feature_id", "go_id", "protein_id", "rank", "confirmed"} <= columns("go_worklist")
    migrate.downgrade(store_url, "0007_structure_coverage")
    engine = make_engine(store_url)
    assert "go_worklist" not in inspect(engine).get_table_names()
    engine.dispose()
    coverage = {"structure_id", "structure_share", "structure_peak_covered"}
    assert coverage <= columns("top_examples")
    migrate.downgrade(store_url, "0006_go_protocols")
    assert not coverage & columns("top_examples")
    assert {"p_length", "q_length", "protocol"} <= columns("go_enrichments")
    assert {
        "n_go_hits_length",
        "map_x",
        "map_y",
        "lm_effect",
        "n_go_hits_paper",
        *AA_COLUMNS,
    } <= columns("features")
    assert {"name", "statement", "settings", "figures"} <= columns("go_protocols")
    migrate.downgrade(store_url, "0005_feature_effects")
    assert "protocol" not in columns("go_enrichments")
    assert "n_go_hits_paper" not in columns("features") and "lm_effect" in columns("features")
    migrate.downgrade(store_url, "0004_aa_profile")
    assert "lm_effect" not in columns("features") and set(AA_COLUMNS) <= columns("features")
    migrate.downgrade(store_url, "0003")
    assert "map_x" in columns("features")
    assert not set(AA_COLUMNS) & columns("features")
    migrate.downgrade(store_url, "0002")
    assert "n_go_hits_length" in columns("features")
    assert not {"map_x", "map_y"} & columns("features")
    migrate.downgrade(store_url, "0001")
    assert "n_go_hits_length" not in columns("features")
    migrate.upgrade(store_url)


def test_codec_round_trip() -> None:
    values = np.array([0.0, 1.5, -2.25, 1e6, 3.0009765625], dtype=np.float32)
    decoded = decode_values(encode_values(values))
    assert decoded.dtype == np.float32 and decoded.shape == (5,)
    np.testing.assert_allclose(decoded[[0, 1, 2, 4]], values[[0, 1, 2, 4]], rtol=1e-3)
    assert decoded[3] == np.finfo(np.float16).max  # clipped, not inf
    assert len(encode_values(values)) == 10


def _insert_proteins(session: Session, rows: list[dict[str, str]]) -> list[int]:
    ids = reserve_ids(session, Protein, len(rows))
    bulk_insert(
        session,
        Protein,
        (
            {
                "id": pid, "accession": r["accession"], "name": r["protein_name"] or None,
                "gene": r["gene_symbol"] or None, "organism": r["organism"] or None,
                "taxon_id": 9606, "length": int(r["length"]), "sequence": r["sequence"],
                "go_bp": r["go_bp"] or None, "go_mf": r["go_mf"] or None,
                "go_cc": r["go_cc"] or None, "pfam": None, "ec": None, "source": "test",
            }
            for pid, r in zip(ids, rows, strict=True)
        ),
    )  # fmt: skip
    return ids


def test_real_run_round_trips(migrated_engine: Engine, shared_dir: Path) -> None:
    rows = human_proteins(shared_dir, 12)
    go_ids = sorted({g for r in rows for g in r["go_bp"].split(";") if g})[:3]
    terms = go_term_records(shared_dir, set(go_ids))
    assert terms, "the real proteins carry GO ids found in go-basic.obo"

    def load(session: Session, run: Run) -> None:
        protein_ids = _insert_proteins(session, rows)
        for go_id, rec in terms.items():
            session.add(
                GoTerm(
                    id=go_id, name=rec["name"], namespace="BP", depth=3, level=2,
                    definition=rec.get("def"), parents=[],
                )
            )  # fmt: skip
        sae = Sae(
            run_id=run.id, name="L3-protein-topk", kind="topk", level="protein", layer=3,
            d_in=192, n_latents=768, k=32, fve=0.81, l0=32.0, dead_fraction=0.02,
            loss_recovered=0.9, metrics={"mse": 0.01}, config={"lr": 1e-3},
            weights_path="saes/L3.safetensors", weights_sha256="0" * 64,
        )  # fmt: skip
        session.add(sae)
        session.flush()
        feature = Feature(
            sae_id=sae.id, index=7, density=0.25, n_active=3, max_activation=4.5,
            mean_activation=2.0, hist_edges=[0.0, 1.0, 2.0], hist_counts=[2, 1],
            auto_label="test label",
        )  # fmt: skip
        session.add(feature)
        session.flush()
        bulk_insert(
            session,
            TopExample,
            [
                {
                    "feature_id": feature.id, "protein_id": pid, "bin": "top", "rank": rank,
                    "activation": float(rank + 1), "max_position": 0,
                    "residue_values": encode_values(
                        [KYTE_DOOLITTLE.get(aa, 0.0) for aa in row["sequence"]]
                    ),
                }
                for rank, (pid, row) in enumerate(zip(protein_ids, rows, strict=True))
            ],
        )  # fmt: skip
        session.add(
            GoEnrichment(
                sae_id=sae.id, feature_id=feature.id, go_id=next(iter(terms)), namespace="BP",
                study_hits=2, study_size=3, pop_hits=4, pop_size=12, odds_ratio=5.0,
                fold_enrichment=2.0, p_value=0.01, q_value=0.05, p_bonferroni=0.03,
                method="fisher_greater",
            )
        )  # fmt: skip
        session.add(
            Structure(
                protein_id=protein_ids[0], file_path="x.pdb.gz", format="pdb", chain="A",
                chain_sequence=rows[0]["sequence"][:5], residue_ids=["1", "2", "2A", "3", "4"],
                sequence_positions=[0, 1, -1, 2, 3],
            )
        )  # fmt: skip

    run = Run(
        name="roundtrip", base_model="esm2_t4_2M_sprot14mini", checkpoint_sha256="d4f0" * 16,
        layer=3, corpus="human_sprot2014 (first 12)", n_proteins=len(rows),
        config={"seed": 0, "nested": {"k": [16, 64]}},
    )  # fmt: skip
    run_id = publish_run(migrated_engine, run, load)

    with session_factory(migrated_engine)() as session:
        stored = session.get(Run, run_id)
        assert stored is not None and stored.status == "published"
        assert stored.published_at is not None
        assert stored.config == {"seed": 0, "nested": {"k": [16, 64]}}
        assert [s.name for s in stored.saes] == ["L3-protein-topk"]
        feature = session.scalars(select(Feature)).one()
        assert feature.hist_counts == [2, 1]
        examples = session.scalars(
            select(TopExample).where(TopExample.feature_id == feature.id).order_by(TopExample.rank)
        ).all()
        assert len(examples) == len(rows)
        for example, row in zip(examples, rows, strict=True):
            protein = session.get(Protein, example.protein_id)
            assert protein is not None and protein.accession == row["accession"]
            assert protein.sequence == row["sequence"]
            values = decode_values(example.residue_values)
            assert values.shape == (len(row["sequence"]),)
            expected = [KYTE_DOOLITTLE.get(aa, 0.0) for aa in row["sequence"]]
            np.testing.assert_allclose(values, expected, atol=2e-3)
        structure = session.scalars(select(Structure)).one()
        assert structure.sequence_positions == [0, 1, -1, 2, 3]
        hit = session.scalars(select(GoEnrichment)).one()
        assert hit.go_id in terms and hit.study_hits == 2


def test_bulk_insert_stores_what_sqlalchemy_would(
    migrated_engine: Engine, shared_dir: Path
) -> None:
    """The fast paths (tuples to sqlite3's executemany, COPY on PostgreSQL) against SQLAlchemy's
    own insert, on real GO terms: JSON lists, booleans, NULLs, and the Python-side defaults
    (``parents=[]``, ``is_obsolete=False``) of columns the rows leave out."""
    from sqlalchemy import insert

    ids = sorted({g for r in human_proteins(shared_dir, 20) for g in r["go_bp"].split(";") if g})
    records = go_term_records(shared_dir, set(ids[:12]))
    assert len(records) >= 8
    full, partial = [], []
    spaces = {"biological_process": "BP", "molecular_function": "MF", "cellular_component": "CC"}
    for n, (go_id, rec) in enumerate(sorted(records.items())):
        row = {"id": go_id, "name": rec["name"], "namespace": spaces[rec["namespace"]], "depth": n,
               "level": n, "definition": rec.get("def") if n % 3 else None}  # fmt: skip
        if n % 2:
            full.append(
                {**row, "parents": [f"GO:{n:07d}", "GO:0008150"], "is_obsolete": n % 4 == 1}
            )
        else:
            partial.append(row)  # parents and is_obsolete omitted: their defaults apply

    def stored(session: Session) -> dict[str, tuple[object, ...]]:
        return {t.id: (t.name, t.namespace, t.depth, t.level, t.definition, t.parents, t.is_obsolete)
                for t in session.scalars(select(GoTerm))}  # fmt: skip

    with session_factory(migrated_engine)() as session, session.begin():
        assert bulk_insert(session, GoTerm, full) == len(full)
        assert bulk_insert(session, GoTerm, partial) == len(partial)
        fast = stored(session)
        session.rollback()
    with session_factory(migrated_engine)() as session, session.begin():
        session.execute(insert(GoTerm), full)
        session.execute(insert(GoTerm), partial)
        reference = stored(session)
        session.rollback()
    assert fast == reference and len(fast) == len(records)
    assert {fast[r["id"]][5] == [] and fast[r["id"]][6] is False for r in partial} == {True}

    # Column by column (bulk_insert_columns), with values shared by every row as constants.
    shared = {"parents": ["GO:0008150"], "is_obsolete": True}

    def columns_of(rows: list[dict[str, object]]) -> dict[str, list[object]]:
        return {key: [r[key] for r in rows] for key in rows[0]}

    with session_factory(migrated_engine)() as session, session.begin():
        assert bulk_insert_columns(session, GoTerm, columns_of(full)) == len(full)
        assert bulk_insert_columns(session, GoTerm, columns_of(partial[:2])) == 2
        assert bulk_insert_columns(session, GoTerm, columns_of(partial[2:]), shared) == len(
            partial[2:]
        )
        assert bulk_insert_columns(session, GoTerm, {"id": []}) == 0
        with pytest.raises(ValueError, match="differ in length"):
            bulk_insert_columns(session, GoTerm, {"id": ["GO:1"], "name": []})
        columnar = stored(session)
        session.rollback()
    with session_factory(migrated_engine)() as session, session.begin():
        session.execute(insert(GoTerm), full + partial[:2])
        session.execute(insert(GoTerm), [{**r, **shared} for r in partial[2:]])
        reference = stored(session)
        session.rollback()
    assert columnar == reference
    assert {columnar[r["id"]][5:] == (["GO:0008150"], True) for r in partial[2:]} == {True}


def test_publish_is_atomic(migrated_engine: Engine, shared_dir: Path) -> None:
    rows = human_proteins(shared_dir, 5)

    def failing_load(session: Session, run: Run) -> None:
        _insert_proteins(session, rows)
        session.add(Sae(run_id=run.id, name="s", kind="topk", level="protein", layer=1,
                        d_in=4, n_latents=8))  # fmt: skip
        session.flush()
        raise RuntimeError("crash mid-load")

    run = Run(name="crashy", base_model="m", checkpoint_sha256="0", layer=1, corpus="c")
    with pytest.raises(RuntimeError, match="crash mid-load"):
        publish_run(migrated_engine, run, failing_load)
    with session_factory(migrated_engine)() as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 0
        assert session.scalar(select(func.count()).select_from(Protein)) == 0
        assert session.scalar(select(func.count()).select_from(Sae)) == 0

    ok = Run(name="crashy", base_model="m", checkpoint_sha256="0", layer=1, corpus="c")
    publish_run(migrated_engine, ok, lambda s, r: None)
    again = Run(name="crashy", base_model="m", checkpoint_sha256="0", layer=1, corpus="c")
    with pytest.raises(RunExistsError):
        publish_run(migrated_engine, again, lambda s, r: None)
    replacement = Run(name="crashy", base_model="m2", checkpoint_sha256="1", layer=2, corpus="c")
    publish_run(migrated_engine, replacement, lambda s, r: None, replace=True)
    with session_factory(migrated_engine)() as session:
        assert session.scalars(select(Run.base_model)).all() == ["m2"]


def test_sqlite_publish_cache_is_large_while_loading_then_restored(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    migrate.upgrade(sqlite_url)
    seen: list[int] = []

    def load(session: Session, run: Run) -> None:
        seen.append(session.connection().exec_driver_sql("PRAGMA cache_size").scalar_one())

    with engine.connect() as connection:
        default = connection.exec_driver_sql("PRAGMA cache_size").scalar_one()
    run = Run(name="cached", base_model="m", checkpoint_sha256="0", layer=1, corpus="c")
    publish_run(engine, run, load)
    assert seen == [-SQLITE_PUBLISH_CACHE_KIB] and default != seen[0]
    with engine.connect() as connection:  # the pool's one connection, back to the default
        assert connection.exec_driver_sql("PRAGMA cache_size").scalar_one() == default
    with session_factory(engine)() as session:  # and the run was committed
        assert session.scalar(select(Run.status).where(Run.name == "cached")) == "published"
    engine.dispose()


def test_reserve_ids_do_not_collide(migrated_engine: Engine, shared_dir: Path) -> None:
    rows = human_proteins(shared_dir, 6)
    with session_factory(migrated_engine)() as session, session.begin():
        first = _insert_proteins(session, rows[:3])
        second = _insert_proteins(session, rows[3:])
    assert len(set(first) | set(second)) == 6
    with session_factory(migrated_engine)() as session, session.begin():
        # An ORM insert after a bulk load must not reuse a reserved id.
        session.add(Protein(accession="ORM1", length=3, sequence="MKV"))
    with session_factory(migrated_engine)() as session:
        assert session.scalar(select(func.count()).select_from(Protein)) == 7
