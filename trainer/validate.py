"""Input validation shared by the protein readers: errors that name the file and line."""

from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path
from typing import IO

csv.field_size_limit(1 << 26)  # the longest sequences (titin, 34k residues) exceed the default

RESIDUES = "ACDEFGHIKLMNPQRSTVWY" + "XUBZO"
BAD_RESIDUE = re.compile(f"[^{RESIDUES}]")
GO_ID = re.compile(r"GO:\d{7}")
GO_ASPECTS = ("BP", "MF", "CC")


class IngestError(ValueError):
    """Bad input; the message starts with ``file:line:``."""


def where(path: Path | str, line: int) -> str:
    return f"{path}:{line}"


def open_text(path: Path) -> IO[str]:
    """Open a plain or gzip-compressed text file (by magic bytes, not by name)."""
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    if gz:
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def check_sequence(seq: str, at: str) -> None:
    """Refuse empty sequences and letters outside the 20 standard + X U B Z O."""
    if not seq:
        raise IngestError(f"{at}: empty sequence")
    bad = BAD_RESIDUE.search(seq)
    if bad is not None:
        raise IngestError(
            f"{at}: sequence has invalid character {bad.group()!r} at position {bad.start() + 1}"
        )


def parse_go_ids(value: str, at: str, column: str) -> set[str]:
    ids = {v.strip() for v in value.split(";") if v.strip()}
    for go_id in ids:
        if not GO_ID.fullmatch(go_id):
            raise IngestError(f"{at}: column {column}: {go_id!r} is not a GO id (GO:nnnnnnn)")
    return ids
