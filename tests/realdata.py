"""Small slices of the real data in ../shared, read the simple way (for store tests)."""

from __future__ import annotations

import csv
import gzip
from itertools import islice
from pathlib import Path

HUMAN_TSV = Path("data/proteins/human_sprot2014.tsv.gz")


def human_proteins(shared: Path, n: int) -> list[dict[str, str]]:
    """The first ``n`` rows of the human Swiss-Prot table."""
    with gzip.open(shared / HUMAN_TSV, "rt", newline="") as handle:
        return list(islice(csv.DictReader(handle, delimiter="\t"), n))


def go_term_records(shared: Path, ids: set[str]) -> dict[str, dict[str, str]]:
    """Name and namespace of the given GO ids, scanned from go-basic.obo.gz."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    with gzip.open(shared / "data/go/go-basic.obo.gz", "rt") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line == "[Term]":
                if current.get("id") in ids:
                    found[current["id"]] = current
                current = {}
            elif ": " in line:
                key, value = line.split(": ", 1)
                current.setdefault(key, value)
    if current.get("id") in ids:
        found[current["id"]] = current
    return found


# Kyte–Doolittle hydropathy: a real per-residue property, used as per-residue values.
KYTE_DOOLITTLE = {
    "A": 1.8, "R": -4.5, "N": -3.5, "D": -3.5, "C": 2.5, "Q": -3.5, "E": -3.5, "G": -0.4,
    "H": -3.2, "I": 4.5, "L": 3.8, "K": -3.9, "M": 1.9, "F": 2.8, "P": -1.6, "S": -0.8,
    "T": -0.7, "W": -0.9, "Y": -1.3, "V": 4.2,
}  # fmt: skip
