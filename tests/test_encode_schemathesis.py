"""Schemathesis against the live server's OpenAPI schema, the whole API with every check.

The same run as ``schemathesis run --checks all`` by hand (examples, coverage, fuzzing and
stateful phases), bounded by ``--max-examples`` so it stays fast: no 5xx, responses match the
schema, schema-valid requests are accepted and schema-violating ones rejected. The one status
allowed beyond schemathesis' defaults for a schema-valid request is 413: the server's size limits
(body bytes, residues per sequence, records per request) are deployment settings, documented as
413 responses of the operation, not schema constraints (a JSON schema cannot count FASTA records
across list items). Steering and variants may also answer 422 to a schema-valid request: what
they refuse beyond their schema are cross-field facts no JSON schema states (a variant's wild-type
residue must be the sequence's residue there, positions must lie within the sequence, a feature
index below the chosen dictionary's latent count); every single-field rule is in their schema.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.encode_fixtures import live_server  # noqa: F401

pytestmark = pytest.mark.slow

CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]

[[operations]]
include-path-regex = "^/api/v1/(steer|variants)$"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "3xx", "401", "403", "404", "409", "413", "422", "429", "5xx",
]
"""


def test_api_contract_all_checks(
    live_server: str,  # noqa: F811
    demo_store: Any,
    tmp_path: Path,
) -> None:
    # The first encode loads the model (seconds on a busy CPU); warm it so no request times out.
    warm = httpx.post(
        f"{live_server}/api/v1/encode",
        json={"sae_id": demo_store.sae_id, "sequences": ["MKV"]},
        timeout=120,
    )
    assert warm.status_code == 200, warm.text
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"{live_server}/openapi.json", "--checks", "all", "--max-examples", "15",
        "--seed", "0", "--generation-database", "none", "--workers", "1",
        "--request-timeout", "60",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    report = done.stdout + done.stderr
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    assert selected, report[-3000:]
    # Every operation of the API, steering and variants included (21 when this was written).
    assert int(selected[1]) == int(selected[2]) >= 21, report[-3000:]
    assert done.returncode == 0, report[-12000:]
