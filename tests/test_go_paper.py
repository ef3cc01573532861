"""The seed paper's GO protocol against goatools' own GOEnrichmentStudy with its defaults.

Real proteins: human Swiss-Prot 2014 entries (organism Homo sapiens) and structure-set entries
(no organism), so the population filter is exercised; real signals: amino-acid composition and
length, active above their 75th or 95th percentile (study sets of a quarter and a twentieth).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from goatools.go_enrichment import GOEnrichmentStudy
from goatools.obo_parser import GODag
from scipy.stats import fisher_exact

from trainer.go.fisher import fisher_two_sided
from trainer.go.ontology import Ontology, load_ontology, plain_obo
from trainer.go.paper import (
    PAPER_ORGANISM,
    PaperPopulation,
    finish_paper,
    paper_population,
    paper_tests,
)
from trainer.go.protein_table import ProteinTable, read_protein_table

N_HUMAN, N_OTHER = 300, 100


@pytest.fixture(scope="module")
def obo(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plain_obo(shared_dir / "data/go/go-basic.obo.gz", tmp_path_factory.mktemp("obo"))


@pytest.fixture(scope="module")
def ontology(shared_dir: Path, obo: Path) -> Ontology:
    return load_ontology(shared_dir / "data/go/go-basic.obo.gz", obo.parent)


@pytest.fixture(scope="module")
def table(shared_dir: Path) -> ProteinTable:
    """Human and structure-set proteins interleaved, so population rows are not a prefix."""
    human = read_protein_table(shared_dir / "data/proteins/human_sprot2014.tsv.gz", N_HUMAN)
    other = read_protein_table(
        shared_dir / "data/proteins/structure_proteins_sprot2014.tsv.gz", N_OTHER
    )
    mixed = ProteinTable()
    order = [(human, i) for i in range(N_HUMAN)] + [(other, i) for i in range(N_OTHER)]
    order = [order[i] for i in np.random.default_rng(0).permutation(len(order))]
    for src, i in order:
        for name in ("accessions", "sequences", "go_bp", "go_mf", "go_cc", "organisms"):
            getattr(mixed, name).append(getattr(src, name)[i])
    return mixed


@pytest.fixture(scope="module")
def features(table: ProteinTable) -> sp.csc_matrix:
    cols = [[s.count(a) / len(s) for s in table.sequences] for a in "KLCWEPHG"]
    cols.append([float(len(s)) for s in table.sequences])
    x = np.array(cols).T
    out = [np.where(x > np.quantile(x, q, axis=0), x, 0.0) for q in (0.75, 0.95)]
    return sp.csc_matrix(np.hstack(out))


@pytest.fixture(scope="module")
def population(ontology: Ontology, table: ProteinTable) -> PaperPopulation:
    return paper_population(ontology, table.go_bp, table.organisms, len(table.accessions))


def test_population_is_the_human_proteins(table: ProteinTable, population: PaperPopulation) -> None:
    assert table.organisms.count(PAPER_ORGANISM) == N_HUMAN
    assert table.organisms.count(None) == N_OTHER
    assert population.size == N_HUMAN  # annotated or not: goatools' pop_n counts them all
    assert all(table.organisms[r] == PAPER_ORGANISM for r in population.protein_rows)
    unannotated = sum(1 for r in population.protein_rows if not table.go_bp[r])
    assert unannotated > 0


def test_paper_protocol_equals_goatools_defaults(
    obo: Path,
    ontology: Ontology,
    table: ProteinTable,
    features: sp.csc_matrix,
    population: PaperPopulation,
) -> None:
    """Every test's p-value (rtol 1e-9) and counts, and the significant set, of each feature."""
    dag = GODag(str(obo), prt=None)  # the paper's GODag("go.obo"): no obsolete terms loaded
    human = [table.accessions[r] for r in population.protein_rows]
    assoc = {
        table.accessions[r]: set(table.go_bp[r]) for r in population.protein_rows if table.go_bp[r]
    }
    goea = GOEnrichmentStudy(human, assoc, dag, methods=["bonferroni"], log=None)
    every = finish_paper([paper_tests(features, population, keep_all=True)], population, ontology)
    hits = finish_paper([paper_tests(features, population, block_size=5)], population, ontology)
    dense = features.toarray()
    n_checked = n_significant = n_depleted = 0
    for f in range(dense.shape[1]):
        study = {table.accessions[i] for i in np.flatnonzero(dense[:, f] != 0)}  # any organism
        ref = {r.GO: r for r in goea.run_study(study, prt=None)}
        mine = every["feature_index"] == f
        assert set(every["go_id"][mine]) == set(ref)
        assert mine.sum() == len(population.term_ids)  # every term present is tested
        want = np.array([[ref[t].p_uncorrected, ref[t].ratio_in_study[0], ref[t].ratio_in_study[1],
                          ref[t].ratio_in_pop[0], ref[t].ratio_in_pop[1]]
                         for t in every["go_id"][mine]])  # fmt: skip
        np.testing.assert_allclose(every["p_value"][mine], want[:, 0], rtol=1e-9, atol=0)
        np.testing.assert_array_equal(every["study_hits"][mine], want[:, 1])
        np.testing.assert_array_equal(every["study_size"][mine], want[:, 2])
        np.testing.assert_array_equal(every["pop_hits"][mine], want[:, 3])
        np.testing.assert_array_equal(every["pop_size"][mine], want[:, 4])
        significant = {t for t, r in ref.items() if r.p_bonferroni < 0.05}
        got = hits["feature_index"] == f
        assert set(hits["go_id"][got]) == significant
        np.testing.assert_allclose(
            hits["p_bonferroni"][got],
            [min(ref[t].p_bonferroni, 1.0) for t in hits["go_id"][got]],
            rtol=1e-9, atol=0,
        )  # fmt: skip
        n_depleted += sum(ref[t].enrichment == "p" for t in significant)
        n_significant += len(significant)
        n_checked += int(mine.sum())
    assert n_checked > 15_000  # 18 features x 971 terms
    assert n_significant > 20  # a real signal, not only null tests
    assert n_depleted > 0  # and depletion, which the paper keeps too


def test_two_sided_fisher_equals_scipy_on_ties_and_tails() -> None:
    """Small symmetric tables (exact ties), and extreme tails of a full-corpus size."""
    tables = [(k, n, kk, 12) for n in range(0, 13) for kk in range(0, 13)
              for k in range(max(0, n + kk - 12), min(n, kk) + 1)]  # fmt: skip
    tables += [(0, 20000, 3000, 70000), (2500, 20000, 3000, 70000), (400, 1000, 30000, 70000),
               (1, 5, 2, 70000), (857, 20000, 3000, 70000), (858, 20000, 3000, 70000)]  # fmt: skip
    for big_n in sorted({t[3] for t in tables}):
        sel = [t for t in tables if t[3] == big_n]
        k, n, kk = (np.array([t[i] for t in sel]) for i in range(3))
        p, _ = fisher_two_sided(k, n, kk, big_n)
        ref = [
            fisher_exact([[a, b - a], [c - a, big_n - b - c + a]])[1]
            for a, b, c in zip(k, n, kk, strict=True)
        ]
        np.testing.assert_allclose(p, ref, rtol=1e-9, atol=0)
