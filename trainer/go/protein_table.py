"""Read a protein table in the shared layout (accession, length, go_bp, go_mf, go_cc, sequence,\noptionally organism).

A stand-in with the attributes of ``trainer.corpus.Corpus`` that the GO stage uses, for tests and
benchmarks on ``human_sprot2014.tsv.gz``-style files.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

REQUIRED = ("accession", "go_bp", "go_mf", "go_cc", "sequence")


class GoCorpus(Protocol):
    """What the GO stage reads from a corpus: parallel lists in corpus order."""

    accessions: list[str]
    sequences: list[str]
    go_bp: list[set[str]]
    go_mf: list[set[str]]
    go_cc: list[set[str]]
    organisms: list[str | None]  # "Homo sapiens" for human proteins; None where not given


@dataclass
class ProteinTable:
    """Parallel lists in file order."""

    accessions: list[str] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)
    go_bp: list[set[str]] = field(default_factory=list)
    go_mf: list[set[str]] = field(default_factory=list)
    go_cc: list[set[str]] = field(default_factory=list)
    organisms: list[str | None] = field(default_factory=list)


def _ids(value: str) -> set[str]:
    return {v.strip() for v in value.split(";") if v.strip()}


def read_protein_table(path: Path, limit: int | None = None) -> ProteinTable:
    """The first ``limit`` rows (all when None) of a tab-separated, optionally gzipped table."""
    opener = gzip.open if str(path).endswith(".gz") else open
    table = ProteinTable()
    with opener(path, "rt", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {', '.join(missing)}")
        for row in reader:
            if limit is not None and len(table.accessions) >= limit:
                break
            if not row["accession"] or not row["sequence"]:
                raise ValueError(f"{path}:{reader.line_num}: empty accession or sequence")
            table.accessions.append(row["accession"])
            table.sequences.append(row["sequence"])
            table.go_bp.append(_ids(row["go_bp"]))
            table.go_mf.append(_ids(row["go_mf"]))
            table.go_cc.append(_ids(row["go_cc"]))
            table.organisms.append((row.get("organism") or "").strip() or None)
    return table
