"""A small but real published run, for the explorer and API tests, made by the trainer itself.

``tests/configs/explorer.toml`` run through the pipeline (ingest, embed, train, analyze, GO,
publish): real human Swiss-Prot proteins with their real structures (mapped to the sequence by
ingest's alignment), the real mini ESM2 model, and its layer-3 neurons as the dictionary (the
neuron baseline, kind "neurons", residue level). Top examples carry the real per-residue
activations, chosen and binned by the analysis stage; the store is written by the publisher. So
the pages are tested on exactly what a user's run publishes, and a change to the trainer or the
publisher shows here too. Built once per test session (seconds).

Tests should rely only on what ``FixtureInfo`` says: one published run with one residue-level
dictionary, features with top examples (bins "top", "q1".."q5", "structure") and per-residue
values, proteins with structures whose ``sequence_positions`` come from an alignment, GO terms
for the proteins' annotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.settings import PROJECT_ROOT, Settings
from app.store import migrate
from app.store.engine import make_engine
from app.store.schema import Protein, Sae, Structure
from trainer.config import load_config
from trainer.pipeline import Pipeline

CONFIG = PROJECT_ROOT / "tests" / "configs" / "explorer.toml"
STAGES = ["ingest", "embed", "train", "analyze", "go", "publish"]
LAYER = 3


@dataclass
class FixtureInfo:
    url: str
    run_id: int
    sae_id: int  # the layer-3 residue-level neurons
    n_features: int
    accessions: list[str]  # every protein of the run, in the store's order
    structure_accessions: list[str]  # those with >= 1 structure, sorted
    data_dir: Path  # the trainer's data directory (the run's work directory is under it)


def build_store(shared: Path, db_path: Path) -> FixtureInfo:
    """Run the fixture config with its data directory beside ``db_path`` and publish it into the
    SQLite file ``db_path`` (see module docstring)."""
    settings = Settings(data_dir=db_path.parent / "data", shared_dir=shared)
    url = f"sqlite:///{db_path}"
    migrate.upgrade(url)
    pipeline = Pipeline(load_config(CONFIG, settings), settings, database_url=url)
    run_id = pipeline.run(STAGES)
    assert run_id is not None
    engine = make_engine(url)
    with Session(engine) as session:
        sae = session.scalars(select(Sae).where(Sae.run_id == run_id)).one()
        accessions = list(session.scalars(select(Protein.accession).order_by(Protein.id)))
        with_structure = session.scalars(
            select(Protein.accession).join(Structure).distinct().order_by(Protein.accession)
        )
        info = FixtureInfo(url=url, run_id=run_id, sae_id=sae.id, n_features=sae.n_latents,
                           accessions=accessions, structure_accessions=list(with_structure),
                           data_dir=settings.data_dir)  # fmt: skip
    engine.dispose()
    return info
