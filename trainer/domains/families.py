"""Pfam / PROSITE families of the corpus's human proteins, as incidence matrices the GO
machinery tests (``trainer.go.annotations.NamespaceIncidence``, one "namespace" per source).

The families are per human gene (``human_domains_2022.tsv.gz``: entrez_gene, source,
accession); a corpus protein gets its gene's families through the ``entrez_gene`` column of the
human protein table (``human_sprot2014.tsv.gz``), a protein with several genes the union. Only
human proteins have them, so the population of every source is the corpus's human proteins
(organism "Homo sapiens"), with or without a family: a protein the table gives no family is a
protein without one, not an unannotated one. Families have no hierarchy: no propagation.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from trainer.go.annotations import NamespaceIncidence

HUMAN = "Homo sapiens"
SOURCES = ("Pfam", "PROSITE")
SOURCE_OF_PREFIX = {"PF": "Pfam", "PS": "PROSITE"}


def _rows(path: Path, required: set[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a tab-separated, optionally gzipped table with ``required``."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = required - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            yield reader.line_num, row


def read_gene_families(path: Path) -> dict[str, set[tuple[str, str]]]:
    """entrez_gene -> {(source, accession)}; a bad row is an error naming its line."""
    out: dict[str, set[tuple[str, str]]] = {}
    for line, row in _rows(path, {"entrez_gene", "source", "accession"}):
        gene, source, acc = row["entrez_gene"].strip(), row["source"].strip(), row["accession"]
        acc = acc.strip()
        if source not in SOURCES or not gene or SOURCE_OF_PREFIX.get(acc[:2]) != source:
            raise ValueError(
                f"{path}:{line}: expected entrez_gene, source Pfam|PROSITE and a "
                f"PF/PS accession, got {gene!r}, {source!r}, {acc!r}"
            )
        out.setdefault(gene, set()).add((source, acc))
    return out


def read_protein_genes(path: Path) -> dict[str, list[str]]:
    """accession -> its NCBI Gene ids (the human protein table's ``entrez_gene``, ``|``-split)."""
    return {
        row["accession"]: [g.strip() for g in row["entrez_gene"].split("|") if g.strip()]
        for _, row in _rows(path, {"accession", "entrez_gene"})
    }


def protein_families(
    accessions: Sequence[str],
    organisms: Sequence[str | None],
    genes_of: dict[str, list[str]],
    families_of: dict[str, set[tuple[str, str]]],
) -> tuple[np.ndarray, list[set[tuple[str, str]]]]:
    """The human corpus rows (ascending) and each one's families."""
    rows = [r for r, org in enumerate(organisms) if org == HUMAN]
    fams = [
        set().union(*(families_of.get(g, set()) for g in genes_of.get(accessions[r], [])))
        for r in rows
    ]
    return np.asarray(rows, dtype=np.int64), fams


def family_incidences(
    rows: np.ndarray, families: Sequence[set[tuple[str, str]]], min_size: int = 1
) -> dict[str, NamespaceIncidence]:
    """One 0/1 [human proteins × families] incidence per source, families of >= ``min_size``
    proteins only; every human protein is in each population."""
    out: dict[str, NamespaceIncidence] = {}
    for source in SOURCES:
        per_row = [sorted(acc for s, acc in fam if s == source) for fam in families]
        accs = sorted({a for accs in per_row for a in accs})
        col = {a: j for j, a in enumerate(accs)}
        indptr = np.zeros(len(per_row) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(a) for a in per_row])
        indices = np.fromiter((col[a] for row in per_row for a in row), np.int64, int(indptr[-1]))
        matrix = sp.csr_matrix(
            (np.ones(indices.size, np.int32), indices, indptr), shape=(len(per_row), len(accs))
        )
        inc = NamespaceIncidence(source, rows, accs, matrix)
        out[source] = inc.restrict_terms(inc.term_sizes() >= min_size)
    return out
