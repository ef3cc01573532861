"""Domain-family enrichment (trainer.domains) on real human proteins and real Pfam / PROSITE
families: the join, the tests against scipy, the length control, the label rule, and the
published run's API, exports, list filter and search (tests/tiny_run.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient
from scipy.stats import fisher_exact

from app.stage_summaries import DomainsSummary
from tests.apps import app_for
from tests.tiny_run import TinyRun
from trainer.analysis_files import load_columns
from trainer.domains.families import (
    family_incidences,
    protein_families,
    read_gene_families,
    read_protein_genes,
)
from trainer.domains.stage import DomainConfig, run_domain_stage
from trainer.explain.labels import DomainHit, GoHit, feature_label
from trainer.go.protein_table import read_protein_table
from trainer.go.stage import GoConfig

HUMAN = "data/proteins/human_sprot2014.tsv.gz"
FAMILIES = "data/annotations/human_domains_2022.tsv.gz"


@pytest.fixture(scope="module")
def human(shared_dir: Path):  # type: ignore[no-untyped-def]
    table = read_protein_table(shared_dir / HUMAN, limit=600)
    genes = read_protein_genes(shared_dir / HUMAN)
    families = read_gene_families(shared_dir / FAMILIES)
    return table, genes, families


def test_families_join_on_entrez_gene(human, shared_dir: Path) -> None:  # type: ignore[no-untyped-def]
    table, genes, families = human
    # NCBI Gene 1 (A1BG) has exactly these two families in the table
    assert families["1"] == {("PROSITE", "PS50835"), ("Pfam", "PF13895")}
    organisms = ["Homo sapiens"] * len(table.accessions)
    organisms[0] = None  # a non-human protein is outside the population
    rows, fams = protein_families(table.accessions, organisms, genes, families)
    assert rows[0] == 1 and rows.size == len(table.accessions) - 1
    for r, fam in zip(rows[:50], fams[:50], strict=True):
        expected = set().union(*(families.get(g, set()) for g in genes[table.accessions[r]]))
        assert fam == expected
    incs = family_incidences(rows, fams, min_size=3)
    assert set(incs) == {"Pfam", "PROSITE"}
    for inc in incs.values():
        assert inc.pop_size == rows.size  # every human protein, with or without a family
        assert (inc.term_sizes() >= 3).all()


def test_bad_family_row_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "fam.tsv"
    path.write_text("entrez_gene\tsource\taccession\n1\tPfam\tPF13895\n2\tPfam\tPS00477\n")
    with pytest.raises(ValueError, match=r"fam.tsv:3: expected"):
        read_gene_families(path)


def _run(human, shared_dir: Path, tmp_path: Path, features: np.ndarray):  # type: ignore[no-untyped-def]
    table, _, _ = human
    table.organisms[:] = ["Homo sapiens"] * len(table.accessions)
    work = tmp_path / "run"
    (work / "analysis" / "d").mkdir(parents=True)
    sp.save_npz(work / "analysis" / "d" / "protein_activations.npz", sp.csr_matrix(features))
    cfg = DomainConfig(families_path=shared_dir / FAMILIES, proteins_path=shared_dir / HUMAN)
    go = GoConfig(n_permutations=1, length_bins=5)
    summary = run_domain_stage(work, cfg, go, dictionaries=["d"], corpus=table)["d"]
    return table, summary, load_columns(work / "domains" / "d" / "hits.npz")


def test_family_detector_found_and_p_equals_scipy(human, shared_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A feature that is a real property of the proteins (histidine content, zinc fingers are
    His-rich) against protein length; p-values equal scipy's fisher_exact (one-sided)."""
    table, genes, families = human
    seqs = table.sequences
    his = np.array([s.count("H") / len(s) for s in seqs])
    length = np.array([len(s) for s in seqs], dtype=float)
    feats = np.stack([np.maximum(his - np.quantile(his, 0.9), 0),
                      np.maximum(length - np.quantile(length, 0.8), 0)], axis=1)  # fmt: skip
    table, summary, hits = _run(human, shared_dir, tmp_path, feats)
    his_hits = hits["accession"][(hits["feature_index"] == 0) & (hits["q_value"] < 0.05)]
    assert "PF00096" in set(his_hits.tolist())  # C2H2 zinc finger
    rows, fams = protein_families(table.accessions, table.organisms, genes, families)
    has = np.array([("Pfam", "PF00096") in f for f in fams])
    study = feats[rows, 0] > 0
    table2 = [[int((study & has).sum()), int((study & ~has).sum())],
              [int((~study & has).sum()), int((~study & ~has).sum())]]  # fmt: skip
    at = (hits["feature_index"] == 0) & (hits["accession"] == "PF00096")
    assert hits["p_value"][at][0] == pytest.approx(
        fisher_exact(table2, alternative="greater").pvalue, rel=1e-9
    )
    # Length-stratified q beside q: the His feature keeps its zinc fingers within strata, the
    # length feature keeps no more families than Fisher gave it.
    assert hits["q_length"][at][0] < 0.05
    by_length = hits["feature_index"] == 1
    assert (hits["q_length"][by_length] < 0.05).sum() <= (hits["q_value"][by_length] < 0.05).sum()
    assert summary["permutation_control"]["permutations"][0]["length_bh"]["features_with_hit"] == 0


def test_summary_written_as_the_stage_builds_it(human, shared_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The summary goes through ``DomainsSummary`` on its way out, unchanged: the file holds the
    stage's dictionary as plain ``json.dumps`` writes it (keys, order, figures), the control's
    rates included, and reads back through the model byte for byte."""
    table, _, _ = human
    table.organisms[:] = ["Homo sapiens"] * len(table.accessions)
    his = np.array([s.count("H") / len(s) for s in table.sequences])
    feats = np.maximum(his - np.quantile(his, 0.9), 0)[:, None]
    work = tmp_path / "run"
    for name, values in (("d", feats), ("c", feats[::-1])):
        (work / "analysis" / name).mkdir(parents=True)
        sp.save_npz(work / "analysis" / name / "protein_activations.npz", sp.csr_matrix(values))
    cfg = DomainConfig(families_path=shared_dir / FAMILIES, proteins_path=shared_dir / HUMAN)
    summaries = run_domain_stage(work, cfg, GoConfig(n_permutations=1, length_bins=5),
                                 dictionaries=["d"], control_of={"d": "c"}, corpus=table)  # fmt: skip
    for name, summary in summaries.items():
        path = work / "domains" / name / "summary.json"
        assert path.read_text() == json.dumps(summary, indent=2)
        assert DomainsSummary.read(path).to_json() == path.read_text()
    control = summaries["d"]["random_model_control"]
    assert control == {
        "dictionary": "c",
        **{f"pct_features_with_hit_{k}": summaries["c"][k]["pct_features_with_hit"]
           for k in ("bh", "bonferroni", "length_bh")},
    }  # fmt: skip


def test_domain_label_only_when_strongest_beyond_length() -> None:
    go = GoHit("GO:0003700", "DNA-binding transcription factor activity", "MF", 4,
               q_value=1e-6, fold_enrichment=3.0, is_most_specific=True, q_length=1e-5)  # fmt: skip
    strong = DomainHit("PF00096", "Pfam", q_value=1e-9, fold_enrichment=6.0, q_length=1e-8)
    weak = DomainHit("PF00096", "Pfam", q_value=1e-9, fold_enrichment=6.0, q_length=1e-3)
    explained = DomainHit("PF00096", "Pfam", q_value=1e-9, fold_enrichment=6.0, q_length=0.2)
    label = feature_label([go], domains=[strong])
    assert label is not None and label.source == "auto:domain" and "PF00096" in label.text
    label = feature_label([go], domains=[weak])
    assert label is not None and label.source == "auto:go"
    label = feature_label([], domains=[explained])
    assert label is None


@pytest.fixture(scope="module")
def client(tiny_run: TinyRun) -> Iterator[TestClient]:
    with TestClient(app_for(tiny_run.url)) as test_client:
        yield test_client


def test_published_domains_served(client: TestClient) -> None:
    """The tiny run has 27 human proteins and no family hit: every feature was tested (0, not
    null), the control statement is served, the filter and the exports carry the columns."""
    runs = client.get("/api/v1/runs").json()
    sae = next(s for r in runs for s in r["saes"] if s["name"] == "L3-protein-topk")
    every = client.get(f"/api/v1/saes/{sae['id']}/features", params={"limit": 500}).json()
    assert all(f["n_domain_hits"] == 0 and f["top_domain"] is None for f in every["items"])
    with_hit = client.get(f"/api/v1/saes/{sae['id']}/features", params={"has_domain": True})
    assert with_hit.json()["total"] == 0
    without = client.get(f"/api/v1/saes/{sae['id']}/features", params={"has_domain": False})
    assert without.json()["total"] == every["total"]
    f = every["items"][0]
    detail = client.get(f"/api/v1/features/{f['id']}").json()
    assert detail["domain_hits"] == []
    control = detail["domain_control"]
    assert control["population_size"] == 27 and control["pct_features_with_hit"] == 0.0
    assert "human proteins" in control["statement"]
    header = client.get(f"/api/v1/saes/{sae['id']}/export.csv").text.splitlines()[0]
    assert {"top_domain", "n_domain_hits_length", "domain_hits"} <= set(header.split(","))
    html = client.get(f"/features/{f['id']}").text
    assert 'id="domain-h"' in html and "No family is enriched" in html
    assert 'name="has_domain"' in client.get(f"/saes/{sae['id']}/features").text
    assert (
        client.get(f"/api/v1/saes/{sae['id']}/features", params={"has_domain": "x"}).status_code
        == 422
    )
