"""The lent-GPU protocol of ``scripts/device/full_run.sh``, run here on the CPU with the tiny
config: a call whose budget is spent stops before the next stage with its summary written, and
a later call with the remaining stages resumes and finishes the run (docs/pipeline.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT_ROOT / "scripts" / "device" / "full_run.sh"
CONFIG = "tests/configs/tiny.toml"


def _call(stages: str, budget_s: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), CONFIG, stages],
        cwd=PROJECT_ROOT,
        env={**env, "BUDGET_S": str(budget_s)},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_a_call_out_of_budget_stops_and_the_next_call_finishes_the_run(
    tmp_path: Path, shared_dir: Path
) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "WHEELS": "none",  # this venv has every package the device image lacks
        "PYTHON": sys.executable,
        "OUT": str(out),
        "PROTSAE_SHARED_DIR": str(shared_dir),
        "PROTSAE_DATA_DIR": str(tmp_path / "data"),
        "PROTSAE_DATABASE_URL": f"sqlite:///{tmp_path / 'store.sqlite'}",
    }
    first = _call("ingest", 0, env)  # no budget: runs to the end
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    # A budget already spent (10 s are kept for the summary): the next stage does not start,
    # the call ends with the shell's timeout status and the summary still says what was done.
    spent = _call("embed,train", 1, env)
    assert spent.returncode == 124, spent.stdout[-2000:] + spent.stderr[-2000:]
    assert "no time left for embed" in (out / "run.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["timings_s"]) == {"ingest"}
    assert summary["corpus"]["n_proteins"] > 100

    second = _call("embed,train,analyze,go,publish", 0, env)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["timings_s"]) == {"ingest", "embed", "train", "analyze", "go", "publish"}
    assert summary["embeddings"]["n_proteins"] == summary["corpus"]["n_proteins"]
    topk = summary["dictionaries"]["L3-protein-topk"]
    assert topk["fve"] > 0.5 and topk["analyze_s"] is not None and topk["go_s"] is not None
    assert "publish: L3-protein-topk (1/" in (out / "run.log").read_text()
    assert "published run 'tiny-test-run'" in second.stdout
