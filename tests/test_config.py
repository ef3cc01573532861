"""``[run]`` owns the device and the seeds; old per-section keys load with a warning or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings
from tests.tiny_run import CONFIG
from trainer.config import ConfigError, RunSection, TrainerConfig, load_config, stage_seed
from trainer.config_legacy import ConfigDeprecation


def _seeds(cfg: TrainerConfig) -> dict[str, object]:
    assert cfg.concepts is not None
    return {
        "ingest": cfg.ingest.seed, "saes": [s.seed for s in cfg.saes], "loss": cfg.loss.seed,
        "analyze": cfg.analyze.seed, "go": cfg.go.seed, "concepts": cfg.concepts.seed,
        "explain": cfg.explain.seed, "random_init": cfg.controls.random_init_seed,
    }  # fmt: skip


def test_stage_seeds_derive_from_the_run_seed() -> None:
    run = RunSection(name="r", seed=7, seeds={"go": 3})
    assert [stage_seed(run, s) for s in ("ingest", "analyze", "explain", "random_init", "go")] == [
        7, 7, 49, 12352, 3]  # fmt: skip


def test_shipped_configs_keep_the_seeds_they_had_per_section() -> None:
    """The values each stage drew from when every section had its own seed field."""
    settings = Settings()
    tiny = _seeds(load_config(CONFIG, settings))
    assert tiny == {"ingest": 1, "saes": [0, 0, 0], "loss": 0, "analyze": 0, "go": 0,
                    "concepts": 0, "explain": 42, "random_init": 12345}  # fmt: skip
    seed = load_config(Path("configs/seed-esm2-35m.toml"), settings)
    assert (seed.ingest.seed, seed.explain.seed, seed.analyze.seed, seed.go.seed) == (42, 42, 0, 0)
    assert {s.seed for s in seed.saes} == {0}


def test_run_device_reaches_every_stage(tmp_path: Path) -> None:
    path = tmp_path / "cpu.toml"
    path.write_text(CONFIG.read_text().replace("[run]\n", '[run]\ndevice = "cpu"\n', 1))
    cfg = load_config(path, Settings())
    assert (cfg.run.device, cfg.embed.device, cfg.analyze.device) == ("cpu", "cpu", "cpu")


def test_a_dumped_config_validates_to_itself() -> None:
    cfg = load_config(CONFIG, Settings())
    assert TrainerConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_old_keys_load_with_a_warning_naming_the_new_key(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    text = CONFIG.read_text().replace("[run.seeds]\ningest = 1\n", "")
    text = text.replace("max_length = 400\n", "max_length = 400\nseed = 1\n", 1)
    text = text.replace("[embed]\n", '[embed]\ndevice = "cpu"\n', 1)
    old.write_text(
        text.replace("[analyze]\n", "[analyze]\nseed = 5\n") + '\n[train]\ndevice = "cpu"\n'
    )
    with pytest.warns(ConfigDeprecation) as caught:
        cfg = load_config(old, Settings())
    messages = [str(w.message) for w in caught]
    assert any("[ingest] seed is deprecated: write ingest = 1 under [run.seeds]" in m
               for m in messages)  # fmt: skip
    assert any("[embed] device, [train] device is deprecated: write device = 'cpu' under [run]" in m
               for m in messages)  # fmt: skip
    assert all(m.startswith(f"{old} (or a file it extends): ") for m in messages)
    assert (cfg.ingest.seed, cfg.analyze.seed, cfg.go.seed) == (1, 5, 0)
    assert (cfg.run.device, cfg.embed.device, cfg.analyze.device) == ("cpu", "cpu", "cpu")


def test_old_keys_that_disagree_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "clash.toml"
    path.write_text(CONFIG.read_text().replace("[embed]\n", '[embed]\ndevice = "cuda"\n', 1)
                    .replace("[run]\n", '[run]\ndevice = "cpu"\n', 1))  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"clash\.toml: .*\[embed\] device = 'cuda'.*\[run\] device"
    ):
        load_config(path, Settings())
    path.write_text(
        CONFIG.read_text().replace("max_length = 400\n", "max_length = 400\nseed = 2\n")
    )
    with pytest.raises(
        ConfigError, match=r"\[ingest\] seed = 2 contradicts \[run.seeds\] ingest = 1"
    ):
        load_config(path, Settings())
    path.write_text(CONFIG.read_text() + "\n[train]\nbatch = 3\n")
    with pytest.raises(ConfigError, match=r"\[train\] is gone"):
        load_config(path, Settings())
