"""A real run with GO and concept results, for the Findings and Concept pages, made by the trainer.

``tests/configs/findings.toml`` extends the explorer fixture's config (same run, same data
directory: ingest, embed and the neurons' analysis and GO are reused, not redone) with a residue
TopK SAE on layer 3 and the concepts stage on real residue labels, and is published into its own
SQLite file. So both dictionaries, their GO summaries and their concept alignments reach the
store exactly as a user's run does (trainer.publish), and the pages are checked against the
summaries the stages wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.settings import PROJECT_ROOT, Settings
from app.store import migrate
from app.store.engine import make_engine
from app.store.schema import Run, Sae
from tests.store_fixture import FixtureInfo
from trainer.config import load_config
from trainer.layout import RunLayout
from trainer.pipeline import Pipeline

CONFIG = PROJECT_ROOT / "tests" / "configs" / "findings.toml"
STAGES = ["ingest", "embed", "train", "analyze", "go", "concepts", "publish"]


@dataclass
class FindingsStore:
    url: str
    run_id: int
    run_name: str
    sae_ids: dict[str, int]
    concepts: list[str]
    summaries: dict[str, dict[str, dict[str, Any]]]  # kind -> dictionary -> the stage's summary


def build_findings_store(shared: Path, demo: FixtureInfo, out_dir: Path) -> FindingsStore:
    """Run the findings config on the explorer fixture's data directory; publish into
    ``out_dir/findings.sqlite``."""
    settings = Settings(data_dir=demo.data_dir, shared_dir=shared)
    url = f"sqlite:///{out_dir / 'findings.sqlite'}"
    migrate.upgrade(url)
    cfg = load_config(CONFIG, settings)
    run_id = Pipeline(cfg, settings, database_url=url).run(STAGES)
    assert run_id is not None
    layout = RunLayout.of_run(settings.data_dir, cfg.run.name)
    engine = make_engine(url)
    with Session(engine) as session:
        run = session.get_one(Run, run_id)
        sae_ids = {s.name: s.id for s in session.scalars(select(Sae).where(Sae.run_id == run_id))}
        run_name = run.name
    engine.dispose()
    summaries = {
        "go": {n: json.loads(layout.go_hits(n).summary.read_text()) for n in sae_ids},
        "concepts": {n: json.loads(layout.concept_results(n).summary.read_text()) for n in sae_ids},
    }
    return FindingsStore(url, run_id, run_name, sae_ids, cfg.concepts.concepts, summaries)
