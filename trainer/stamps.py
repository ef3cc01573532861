"""Completion stamps: a finished unit of work (one dictionary's training, analysis, GO tests)
marks itself DONE with a digest of everything its output depends on, upstream stamps included.

A rerun then redoes exactly the work whose inputs changed, and everything downstream of it:
change one SAE's ``k`` and that SAE is trained, analysed and GO-tested again while the others
are kept. A plain marker ("ok", as written before stamps) never matches a stamp, so work from
an older version of the trainer is redone once rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from app.atomic_write import write_atomic


def digest(payload: Any) -> str:
    """A short sha256 of ``payload`` as canonical JSON (keys sorted)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def read_stamp(done: Path) -> str | None:
    """The stamp a DONE marker holds (its first line), or None when there is no marker."""
    try:
        return done.read_text().strip().splitlines()[0]
    except (FileNotFoundError, IndexError):
        return None


def write_stamp(done: Path, stamp: str) -> None:
    """Write the marker atomically: a crash leaves the old marker or the new one, never half."""
    write_atomic(done, stamp + "\n")
