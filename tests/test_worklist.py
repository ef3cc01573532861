"""Worklists and their 2022 check on real human proteins, against a direct set computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from trainer.go.later_snapshot import evidence_group, read_later_annotations
from trainer.go.ontology import load_ontology
from trainer.go.protein_table import read_protein_table
from trainer.go.worklist import length_bins, precision_at
from trainer.go.worklist_stage import WorklistConfig, build_snapshots

HUMAN = "data/proteins/human_sprot2014.tsv.gz"
LATER = "data/annotations/human_go_2022.tsv.gz"


def test_evidence_groups() -> None:
    assert evidence_group("IDA") == "experimental"
    assert evidence_group("IEA") == evidence_group("IBA") == "electronic"
    assert evidence_group("TAS") == "curated"
    assert evidence_group("ND") is None
    with pytest.raises(ValueError, match="unknown GO evidence code"):
        evidence_group("XYZ")


def test_bad_later_file_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "go.tsv"
    bad.write_text(
        "entrez_gene\tgo_id\tnamespace\tevidence\n1\tGO:0008150\tBP\tIDA\n2\tGO:1\tBP\tQQ\n"
    )
    with pytest.raises(ValueError, match=r"go.tsv:3: unknown GO evidence code 'QQ'"):
        read_later_annotations(bad)


@pytest.fixture(scope="module")
def real(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    table = read_protein_table(shared_dir / HUMAN, limit=300)
    ontology = load_ontology(shared_dir / "data/go/go-basic.obo.gz", tmp_path_factory.mktemp("go"))
    cfg = WorklistConfig(later_go=shared_dir / LATER, gene_tables=[shared_dir / HUMAN])
    snapshots, info = build_snapshots(ontology, table, cfg)
    return table, ontology, snapshots, info


def test_snapshots_match_a_direct_reading(real, shared_dir: Path) -> None:  # type: ignore[no-untyped-def]
    _, ontology, snapshots, info = real
    assert info["human_proteins"] == 300 and info["later_resolution"]["unknown_dropped"] >= 0
    # One protein by hand: its gene's 2022 rows, resolved and propagated.
    import csv
    import gzip

    with gzip.open(shared_dir / HUMAN, "rt") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))[:300]
    i = next(j for j, r in enumerate(rows) if "|" not in r["entrez_gene"])
    gene = rows[i]["entrez_gene"]
    with gzip.open(shared_dir / LATER, "rt") as handle:
        direct = {
            r["go_id"]
            for r in csv.DictReader(handle, delimiter="\t")
            if r["entrez_gene"] == gene and r["evidence"] != "ND"
        }
    resolved = {m for g in direct if (m := ontology.resolve(g)[0]) is not None}
    later_any = set().union(*(snapshots.later[g][i] for g in snapshots.later))
    assert later_any == ontology.propagate(resolved)


def test_worklist_equals_brute_force(real) -> None:  # type: ignore[no-untyped-def]
    from trainer.go.worklist import build_worklists

    table, _, snapshots, _ = real
    # Real features: residue composition of each protein (C, K, W shares).
    acts = np.array([[s.count(a) / len(s) for a in "CKW"] for s in table.sequences])
    terms = ["GO:0005515", "GO:0005634", "GO:0006355"]
    hits = {
        "feature_index": np.array([0, 1, 2]), "go_id": np.array(terms),
        "q_value": np.full(3, 0.01), "q_length": np.full(3, 0.01),
        "is_most_specific": np.ones(3, dtype=bool),
    }  # fmt: skip
    out = build_worklists(sp.csc_matrix(acts), hits, snapshots, alpha=0.05, threshold=0.0,
                          max_candidates=40)  # fmt: skip
    bins = length_bins(np.array([len(s) for s in table.sequences]), 10)
    for f, term in enumerate(terms):
        lacks = [i for i in range(300) if term not in snapshots.earlier[i] and acts[i, f] > 0]
        expect = sorted(lacks, key=lambda i: (-acts[i, f], i))[:40]
        mine = out["protein_row"][out["go_id"] == term].tolist()
        assert mine == expect
        gained = [term in set().union(*(snapshots.later[g][i] for g in snapshots.later))
                  for i in expect]  # fmt: skip
        assert (out["confirmed"][out["go_id"] == term] > 0).tolist() == gained
        # The baseline: gain rate among every protein lacking the term, in the candidate's bin.
        pool = [i for i in range(300) if term not in snapshots.earlier[i]]
        for row, rate in zip(expect, out["baseline_rate"][out["go_id"] == term], strict=True):
            same = [i for i in pool if bins[i] == bins[row]]
            hit = [
                i
                for i in same
                if term in set().union(*(snapshots.later[g][i] for g in snapshots.later))
            ]
            assert rate == pytest.approx(len(hit) / len(same))
    p = precision_at(out, (10,))["10"]
    assert p["any"] == pytest.approx(p["experimental"] + p["curated"] + p["electronic"])
    assert 0 <= p["baseline"] <= 1 and p["lists"] == 3
