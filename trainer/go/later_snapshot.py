"""A later GO snapshot of the corpus's proteins (org.Hs.eg.db 2022), grouped by evidence.

The 2022 file lists direct (gene, term, evidence) annotations per NCBI Gene id; the corpus's
proteins join it through the ``entrez_gene`` column of their protein table (``|``-separated:
a protein whose gene record lists several ids gets the union). Evidence codes fall in three
groups, ranked from strongest; ND ("no biological data available") is not an annotation of
function and is skipped.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from trainer.go.ontology import Ontology, ResolveCounts
from trainer.validate import open_text

EVIDENCE_GROUPS: dict[str, frozenset[str]] = {
    # Experimental, incl. high-throughput (HTP, HDA, HMP, HGI, HEP).
    "experimental": frozenset(
        {"EXP", "IDA", "IPI", "IMP", "IGI", "IEP", "HTP", "HDA", "HMP", "HGI", "HEP"}
    ),
    # Curator statements and sequence-similarity inferences a curator reviewed.
    "curated": frozenset(
        {"ISS", "ISO", "ISA", "ISM", "IGC", "RCA", "TAS", "NAS", "IC", "IKR", "IRD", "IBD"}
    ),
    # Automatic: electronic (IEA) and GO's phylogenetic propagation pipeline (IBA).
    "electronic": frozenset({"IEA", "IBA"}),
}
GROUP_ORDER = ("experimental", "curated", "electronic")  # a gain counts under its first group
SKIPPED_EVIDENCE = frozenset({"ND"})
REQUIRED_COLUMNS = ("entrez_gene", "go_id", "evidence")


@dataclass
class LaterAnnotations:
    """Direct GO ids per gene and evidence group, as read (not resolved, not propagated)."""

    by_gene: dict[str, dict[str, set[str]]]
    n_rows: int
    n_skipped_nd: int

    def for_genes(self, genes: Iterable[str]) -> dict[str, set[str]]:
        """The union over ``genes`` of their ids, by evidence group."""
        out: dict[str, set[str]] = {g: set() for g in GROUP_ORDER}
        for gene in genes:
            for group, ids in self.by_gene.get(gene, {}).items():
                out[group] |= ids
        return out


def evidence_group(code: str) -> str | None:
    """The group of a GO evidence code; None for a skipped code (ND)."""
    if code in SKIPPED_EVIDENCE:
        return None
    for group in GROUP_ORDER:
        if code in EVIDENCE_GROUPS[group]:
            return group
    raise ValueError(f"unknown GO evidence code {code!r}")


def read_later_annotations(path: Path) -> LaterAnnotations:
    """Read ``human_go_2022.tsv.gz``-style rows; a bad row raises naming its line."""
    by_gene: dict[str, dict[str, set[str]]] = {}
    n_rows = n_nd = 0
    with open_text(Path(path)) as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {', '.join(missing)}")
        for row in reader:
            gene, go_id, code = row["entrez_gene"], row["go_id"], row["evidence"]
            if not gene or not go_id.startswith("GO:"):
                raise ValueError(f"{path}:{reader.line_num}: bad row (gene {gene!r}, id {go_id!r})")
            try:
                group = evidence_group(code)
            except ValueError as error:
                raise ValueError(f"{path}:{reader.line_num}: {error}") from None
            n_rows += 1
            if group is None:
                n_nd += 1
                continue
            by_gene.setdefault(gene, {}).setdefault(group, set()).add(go_id)
    return LaterAnnotations(by_gene, n_rows, n_nd)


def read_entrez_genes(paths: Iterable[Path]) -> dict[str, list[str]]:
    """accession -> NCBI Gene ids, from every protein table that has an ``entrez_gene`` column."""
    out: dict[str, list[str]] = {}
    for path in paths:
        with open_text(Path(path)) as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            if "entrez_gene" not in (reader.fieldnames or []):
                continue
            for row in reader:
                genes = [g.strip() for g in (row["entrez_gene"] or "").split("|") if g.strip()]
                if genes:
                    out.setdefault(row["accession"], []).extend(genes)
    return out


@dataclass
class PropagatedGroups:
    """Per protein and evidence group: the resolved ids with all their ancestors."""

    groups: dict[str, list[set[str]]]
    resolution: dict[str, int]


def resolve_and_propagate(
    ontology: Ontology, per_protein: list[dict[str, set[str]]]
) -> PropagatedGroups:
    """Resolve each group's ids over ``ontology`` (alt ids mapped, obsolete ids followed to
    ``replaced_by`` or dropped, ids it lacks dropped) and close them over is_a + part_of."""
    total = ResolveCounts()
    groups: dict[str, list[set[str]]] = {}
    for group in GROUP_ORDER:
        resolved, counts = ontology.resolve_sets([p[group] for p in per_protein])
        for key, value in counts.as_dict().items():
            setattr(total, key, getattr(total, key) + value)
        groups[group] = [ontology.propagate(ids) for ids in resolved]
    return PropagatedGroups(groups, total.as_dict())
