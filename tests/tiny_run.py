"""A tiny but complete trainer run (every stage, real data, the real mini model), published into
SQLite once per test session: the pipeline's own tests read it, and so do the browser tests of
pages that need trained SAEs (the feature map). The explain stage talks to a local fake of the
Anthropic API (tests/fake_anthropic.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from app.settings import PROJECT_ROOT, Settings
from app.store import migrate
from tests.fake_anthropic import FakeAnthropic
from trainer.config import load_config
from trainer.pipeline import Pipeline

CONFIG = PROJECT_ROOT / "tests" / "configs" / "tiny.toml"


@dataclass
class TinyRun:
    settings: Settings
    url: str
    run_id: int
    pipeline: Pipeline


def build_tiny_run(shared_dir: Path, root: Path) -> TinyRun:
    """Run tests/configs/tiny.toml into ``root`` (data directory and store)."""
    settings = Settings(data_dir=root / "data", shared_dir=shared_dir)
    url = f"sqlite:///{root / 'store.sqlite'}"
    migrate.upgrade(url)
    cfg = load_config(CONFIG, settings)
    mp = pytest.MonkeyPatch()
    try:
        with FakeAnthropic("sk-test-fake") as fake:
            mp.setenv("ANTHROPIC_API_KEY", "sk-test-fake")
            mp.setenv("ANTHROPIC_BASE_URL", fake.base_url)
            pipeline = Pipeline(cfg, settings, database_url=url)
            run_id = pipeline.run()
    finally:
        mp.undo()
    assert run_id is not None
    return TinyRun(settings, url, run_id, pipeline)
