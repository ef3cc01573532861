"""The engine seam without Ray: the config's engine choice, and a local run that never imports
Ray (the Ray engine's own tests are tests/test_engines_ray.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import PROJECT_ROOT, Settings
from trainer.config import ConfigError, load_config
from trainer.engines import RayConfig
from trainer.engines.local import LocalEngine

DEMO = PROJECT_ROOT / "configs" / "demo.toml"


def test_the_engine_defaults_to_local_and_ray_is_configured_in_its_table(tmp_path: Path) -> None:
    assert load_config(DEMO, Settings()).run.engine == "local"
    config = tmp_path / "cluster.toml"
    config.write_text(f'extends = "{DEMO}"\n[run]\nengine = "ray"\n'
                      '[ray]\naddress = "auto"\ngpus_per_worker = 1\ncpus_per_worker = 4\n')  # fmt: skip
    cfg = load_config(config, Settings())
    assert cfg.run.engine == "ray" and cfg.run.name == "demo-mini-esm2"
    assert cfg.ray == RayConfig(address="auto", gpus_per_worker=1, cpus_per_worker=4)
    config.write_text(f'extends = "{DEMO}"\n[run]\nengine = "spark"\n')
    with pytest.raises(
        ConfigError, match=r"cluster\.toml: run\.engine: Input should be 'local' or 'ray'"
    ):
        load_config(config, Settings())
    config.write_text(f'extends = "{DEMO}"\n[ray]\ncpus_per_worker = 0\n')
    with pytest.raises(ConfigError, match=r"cluster\.toml: ray\.cpus_per_worker"):
        load_config(config, Settings())
    config.write_text(f'extends = "{DEMO}"\n[ray]\nadress = "auto"\n')
    with pytest.raises(ConfigError, match=r"cluster\.toml: ray\.adress: Extra inputs"):
        load_config(config, Settings())


def test_the_local_engine_never_imports_ray() -> None:
    code = (
        "import sys\n"
        "from trainer.pipeline import Pipeline\n"
        "from trainer.engines import start_engine\n"
        "import trainer.go.stage, trainer.analyze\n"
        "assert start_engine('local').name == 'local'\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PROJECT_ROOT, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_local_units_run_in_order_here_and_report_failures_as_values() -> None:
    def halve(context: int, unit: int) -> float:
        if unit == 3:
            raise ValueError("three")
        return (context + unit) / 2

    results = list(LocalEngine().map_units(halve, 1, [1, 2, 3, 4]))
    assert [u for u, _ in results] == [1, 2, 3, 4]
    assert [r for _, r in results if not isinstance(r, BaseException)] == [1.0, 1.5, 2.5]
    assert isinstance(results[2][1], ValueError) and str(results[2][1]) == "three"
