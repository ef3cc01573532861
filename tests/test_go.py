"""GO enrichment stage on real data: ontology mapping, propagation, exactness vs goatools."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from goatools.go_enrichment import GOEnrichmentStudy
from scipy.stats import false_discovery_control

from trainer.go.annotations import NamespaceIncidence, build_incidence, resolve_corpus_annotations
from trainer.go.controls import length_bins, permuted_incidences
from trainer.go.enrichment import (
    HIT_COLUMNS,
    enrich,
    enrich_features,
    finish_enrichment,
    most_specific,
)
from trainer.go.ontology import Ontology, load_ontology
from trainer.go.paper import PAPER_COLUMNS
from trainer.go.protein_table import ProteinTable, read_protein_table
from trainer.go.stage import GoConfig, run_go_stage
from trainer.go.summary import hit_rates

N_PROTEINS = 400


@pytest.fixture(scope="module")
def ontology(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Ontology:
    return load_ontology(shared_dir / "data/go/go-basic.obo.gz", tmp_path_factory.mktemp("obo"))


@pytest.fixture(scope="module")
def table(shared_dir: Path) -> ProteinTable:
    return read_protein_table(shared_dir / "data/proteins/human_sprot2014.tsv.gz", N_PROTEINS)


@pytest.fixture(scope="module")
def incidences(ontology: Ontology, table: ProteinTable) -> dict[str, NamespaceIncidence]:
    per_ns, _ = resolve_corpus_annotations(ontology, table.go_bp, table.go_mf, table.go_cc)
    return {ns: build_incidence(ontology, ns, per_ns[ns], N_PROTEINS) for ns in ("BP", "MF", "CC")}


def composition_features(table: ProteinTable) -> sp.csr_matrix:
    """Real sequence signals: fraction of K, L, C, W, E, P and length, above their median."""
    cols = [[s.count(a) / len(s) for s in table.sequences] for a in "KLCWEP"]
    cols.append([float(len(s)) for s in table.sequences])
    x = np.array(cols).T
    return sp.csr_matrix(np.maximum(x - np.median(x, axis=0), 0.0))


@pytest.fixture(scope="module")
def neurons(table: ProteinTable) -> sp.csr_matrix:
    """ReLU'd mean-pooled neurons of layer 4 of the mini ESM2 model on 120 real proteins."""
    import torch

    from benchmarks.esm_neurons import pooled_neurons

    torch.set_num_threads(1)
    x = pooled_neurons(table.sequences[:120], layers=(4,), max_len=200)
    return sp.csr_matrix(sp.vstack([x, sp.csr_matrix((N_PROTEINS - 120, x.shape[1]))]))


def _obo_records(path: Path) -> dict[str, dict[str, list[str]]]:
    """Independent scan of the OBO file: id -> {tag: values} for [Term] stanzas."""
    records: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    with gzip.open(path, "rt") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line.startswith("["):
                current = {} if line == "[Term]" else None
            elif current is not None and ": " in line:
                tag, value = line.split(": ", 1)
                current.setdefault(tag, []).append(value.split(" ! ")[0])
                if tag == "id":
                    records[value] = current
    return records


def test_alt_id_and_obsolete_counts(
    ontology: Ontology, table: ProteinTable, shared_dir: Path
) -> None:
    records = _obo_records(shared_dir / "data/go/go-basic.obo.gz")
    alt = {a: main for main, r in records.items() for a in r.get("alt_id", [])}
    expected = {"kept": 0, "alt_id_mapped": 0, "replaced_by_mapped": 0, "obsolete_dropped": 0,
                "unknown_dropped": 0}  # fmt: skip
    ids = [
        set(b) | set(m) | set(c)
        for b, m, c in zip(table.go_bp, table.go_mf, table.go_cc, strict=True)
    ]
    for go_id in (g for s in ids for g in s):
        rec = records.get(go_id)
        if go_id in alt:
            expected["alt_id_mapped"] += 1
        elif rec is None:
            expected["unknown_dropped"] += 1
        elif rec.get("is_obsolete") == ["true"]:
            target = rec.get("replaced_by", [None])[0]
            live = target in records and records[target].get("is_obsolete") != ["true"]
            expected["replaced_by_mapped" if live else "obsolete_dropped"] += 1
        else:
            expected["kept"] += 1
    _, counts = ontology.resolve_sets(ids)
    assert counts.as_dict() == expected
    assert expected["alt_id_mapped"] > 0 and expected["obsolete_dropped"] > 0  # the slice has both
    some_alt = next(g for s in ids for g in s if g in alt)
    assert ontology.resolve(some_alt) == (alt[some_alt], "alt_id")


def test_propagation_follows_part_of(ontology: Ontology, incidences: dict) -> None:
    # mitochondrion is_a organelle ..., and part_of cytoplasm (GO:0005737)
    is_a_only = set(ontology.terms["GO:0005739"].get_all_parents())
    assert "GO:0005737" not in is_a_only
    assert "GO:0005737" in ontology.propagate({"GO:0005739"})
    cc = incidences["CC"]
    mito, cyto = cc.term_ids.index("GO:0005739"), cc.term_ids.index("GO:0005737")
    rows = cc.matrix[:, mito].toarray().ravel() > 0
    assert rows.sum() > 10
    assert (cc.matrix[:, cyto].toarray().ravel()[rows] == 1).all()


def _goatools_study(
    ontology: Ontology, table: ProteinTable, inc: NamespaceIncidence
) -> GOEnrichmentStudy:
    per_ns, _ = resolve_corpus_annotations(ontology, table.go_bp, table.go_mf, table.go_cc)
    pop = [table.accessions[r] for r in inc.protein_rows]
    assoc = {table.accessions[r]: set(per_ns[inc.namespace][r]) for r in inc.protein_rows}
    return GOEnrichmentStudy(pop, assoc, ontology.dag, propagate_counts=True, alpha=0.05,
                             methods=["bonferroni", "fdr_bh"], alternative="greater",
                             relationships={"part_of"}, log=None)  # fmt: skip


@pytest.mark.parametrize("signal", ["composition", "neurons"])
def test_pvalues_match_goatools(
    signal: str,
    ontology: Ontology,
    table: ProteinTable,
    incidences: dict,
    request: pytest.FixtureRequest,
) -> None:
    x = (
        composition_features(table)
        if signal == "composition"
        else request.getfixturevalue("neurons")
    )
    features = range(x.shape[1]) if signal == "composition" else range(0, x.shape[1], 24)
    res = enrich(x, incidences, ontology, keep_p=1.0, store_all=True)
    c = res.columns
    dense = x.toarray()
    n_checked = 0
    for ns in ("BP", "MF") if signal == "composition" else ("BP",):
        inc = incidences[ns]
        goea = _goatools_study(ontology, table, inc)
        for f in features:
            study = [table.accessions[r] for r in inc.protein_rows if dense[r, f] > 0]
            ref = {r.GO: r for r in goea.run_study(study, prt=None)}
            mine = (c["feature_index"] == f) & (c["namespace"] == ns)
            if not study:
                assert not ref and not mine.any()
                continue
            ids = c["go_id"][mine]
            assert set(ids) == set(ref)
            want = np.array([[ref[t].p_uncorrected, min(ref[t].p_bonferroni, 1.0), ref[t].p_fdr_bh,
                              ref[t].ratio_in_study[0], ref[t].ratio_in_pop[0]] for t in ids])  # fmt: skip
            np.testing.assert_allclose(c["p_value"][mine], want[:, 0], rtol=1e-9, atol=0)
            np.testing.assert_allclose(c["p_bonferroni"][mine], want[:, 1], rtol=1e-9, atol=0)
            bh_within = false_discovery_control(c["p_value"][mine])
            np.testing.assert_allclose(bh_within, want[:, 2], rtol=1e-9, atol=0)
            np.testing.assert_array_equal(c["study_hits"][mine], want[:, 3])
            np.testing.assert_array_equal(c["pop_hits"][mine], want[:, 4])
            n_checked += int(mine.sum())
    assert n_checked > 1000
    assert (c["p_value"] < 1e-3).sum() > 0  # a real signal, not only null tests


def test_global_bh_and_stored_hits(
    ontology: Ontology, table: ProteinTable, incidences: dict
) -> None:
    x = composition_features(table)
    every = enrich(x, incidences, ontology, keep_p=1.0, store_all=True, block_size=3).columns
    assert every["p_value"].size == enrich(x, incidences, ontology, keep_p=1.0).n_tests
    np.testing.assert_allclose(
        every["q_value"], false_discovery_control(every["p_value"]), rtol=1e-12
    )
    np.testing.assert_allclose(
        every["q_length"], false_discovery_control(every["p_length"]), rtol=1e-12
    )
    # One stratum (no lengths given): Fisher's test again, to the saddlepoint's precision where
    # it matters; tests far from significance keep the screening normal approximation.
    near = every["p_value"] <= 0.1
    np.testing.assert_allclose(every["p_length"][near], every["p_value"][near], rtol=2e-3)
    assert np.all(every["p_length"][~near] > 0.05)
    stored = enrich(x, incidences, ontology, alpha=0.05).columns
    assert list(stored) == list(HIT_COLUMNS)
    sig = (every["q_value"] < 0.05) | (every["p_bonferroni"] < 0.05) | (every["q_length"] < 0.05)
    assert stored["p_value"].size == sig.sum() > 0
    key = lambda c, i: (c["feature_index"][i], c["go_id"][i])  # noqa: E731
    want = {key(every, i): every["q_value"][i] for i in np.flatnonzero(sig)}
    got = {key(stored, i): stored["q_value"][i] for i in range(stored["q_value"].size)}
    assert got == want


def test_length_stratified_test_removes_what_length_explains(
    ontology: Ontology, table: ProteinTable, incidences: dict
) -> None:
    """Protein length as a feature gets Fisher hits (long proteins carry more annotations) but
    none within length strata; amino-acid composition features keep theirs; BH of p_length
    over every test is q_length; under the within-strata shuffle nothing is length-significant."""
    x = composition_features(table)
    lengths = np.array([len(s) for s in table.sequences])
    every = enrich(
        x, incidences, ontology, keep_p=1.0, store_all=True, lengths=lengths, n_length_bins=5
    ).columns
    np.testing.assert_allclose(
        every["q_length"], false_discovery_control(every["p_length"]), rtol=1e-12
    )
    fisher_hits = np.bincount(every["feature_index"][every["q_value"] < 0.05], minlength=7)
    length_hits = np.bincount(every["feature_index"][every["q_length"] < 0.05], minlength=7)
    assert fisher_hits[6] >= 5 and length_hits[6] == 0  # feature 6: length above the median
    assert length_hits[:6].sum() >= 0.8 * fisher_hits[:6].sum() > 0
    # "Most specific" is judged among the hits length does not explain: none for feature 6.
    labelled = (every["q_value"] < 0.05) & (every["q_length"] < 0.05)
    flags = every["is_most_specific"]
    assert not flags[every["feature_index"] == 6].any() and flags.sum() >= 5
    expected = most_specific(
        ontology, every["feature_index"], every["go_id"], every["p_value"], labelled
    )
    np.testing.assert_array_equal(flags, expected)
    shuffled = permuted_incidences(incidences, lengths, n_bins=5, seed=3)
    null = enrich(x, shuffled, ontology, lengths=lengths, n_length_bins=5)
    assert hit_rates(null, 0.05)["length_bh"]["features_with_hit"] == 0


def test_feature_ranges_merge_into_the_whole_dictionarys_result(
    ontology: Ontology, table: ProteinTable, incidences: dict, neurons: sp.csr_matrix
) -> None:
    """Testing features in separate ranges (as the GO stage's parallel units do) and merging
    gives the result of testing them all at once, row for row: BH over the merged histograms,
    the length-stratified test, effect sizes and most-specific flags included."""
    lengths = np.array([len(s) for s in table.sequences])
    x = sp.hstack([composition_features(table), neurons]).tocsr()
    kwargs: dict[str, Any] = dict(lengths=lengths, n_length_bins=5, block_size=16, keep_p=0.2)
    whole = enrich(x, incidences, ontology, store_all=True, **kwargs)
    ranges = [slice(0, 48), slice(48, 64), slice(64, x.shape[1])]
    parts = [enrich_features(x, incidences, features=r, **kwargs) for r in ranges[::-1]]
    merged = finish_enrichment(parts, incidences, ontology, n_features=x.shape[1], store_all=True)
    assert (merged.n_tests, merged.n_active_features) == (whole.n_tests, whole.n_active_features)
    assert whole.columns["p_value"].size > 1000 and (whole.columns["q_length"] < 0.05).sum() >= 5
    for column in HIT_COLUMNS:
        np.testing.assert_array_equal(merged.columns[column], whole.columns[column], column)


def test_hit_rate_over_active_features_leaves_dead_latents_out(
    ontology: Ontology, table: ProteinTable, incidences: dict
) -> None:
    """Two dead (all-zero) latents beside the composition features: same hits, more features."""
    x = composition_features(table)
    padded = sp.hstack([x, sp.csr_matrix((x.shape[0], 2), dtype=x.dtype)]).tocsr()
    live, both = (enrich(m, incidences, ontology) for m in (x, padded))
    assert (both.n_features, both.n_active_features) == (x.shape[1] + 2, live.n_active_features)
    assert live.n_active_features == int((x.getnnz(axis=0) > 0).sum())
    rates = hit_rates(both, 0.05)["bh"]
    assert rates["features_with_hit"] == hit_rates(live, 0.05)["bh"]["features_with_hit"] > 0
    assert rates["pct_active_features_with_hit"] == pytest.approx(
        100 * rates["features_with_hit"] / live.n_active_features, abs=1e-3
    )
    assert rates["pct_active_features_with_hit"] > rates["pct_features_with_hit"]


def test_most_specific_on_a_real_chain(ontology: Ontology) -> None:
    # translation -> peptide biosynthetic process -> amide biosynthetic process (is_a chain)
    chain = ["GO:0006412", "GO:0043043", "GO:0043604"]
    assert chain[1] in ontology.parents(chain[0]) and chain[2] in ontology.parents(chain[1])
    ids = np.array([*chain, "GO:0043604"])
    feature = np.array([0, 0, 0, 1])
    p = np.array([1e-5, 1e-6, 1e-4, 1e-4])
    flag = most_specific(ontology, feature, ids, p, np.array([True, True, True, True]))
    # translation: no significant descendant; its parent is better than translation so stays;
    # amide biosynthesis is explained by a descendant with a smaller p; feature 1 stands alone.
    assert flag.tolist() == [True, True, False, True]
    assert most_specific(ontology, feature, ids, p, np.array([False, True, True, True])).tolist() == [
        False, True, False, True]  # fmt: skip


def test_permutation_keeps_bin_counts(table: ProteinTable, incidences: dict) -> None:
    lengths = np.array([len(s) for s in table.sequences])
    a = permuted_incidences(incidences, lengths, n_bins=5, seed=7)
    b = permuted_incidences(incidences, lengths, n_bins=5, seed=7)
    for ns, inc in incidences.items():
        bins = length_bins(lengths[inc.protein_rows], 5)
        assert len(np.unique(bins)) == 5
        for k in range(5):
            rows = bins == k
            before = np.asarray(inc.matrix[rows].sum(axis=0)).ravel()
            after = np.asarray(a[ns].matrix[rows].sum(axis=0)).ravel()
            np.testing.assert_array_equal(before, after)
        assert (a[ns].matrix != inc.matrix).nnz > 0
        assert (a[ns].matrix != b[ns].matrix).nnz == 0


def test_stage_end_to_end(
    tmp_path: Path,
    shared_dir: Path,
    table: ProteinTable,
    neurons: sp.csr_matrix,
    incidences: dict,
) -> None:
    for name, x in (("neurons", neurons), ("composition", composition_features(table))):
        (tmp_path / "analysis" / name).mkdir(parents=True)
        sp.save_npz(
            tmp_path / "analysis" / name / "protein_activations.npz",
            sp.csr_matrix(x, dtype=np.float32),
        )
    cfg = GoConfig(obo_path=shared_dir / "data/go/go-basic.obo.gz", n_permutations=1, length_bins=4)
    out = run_go_stage(
        tmp_path,
        cfg,
        dictionaries=["composition"],
        control_of={"composition": "neurons"},
        corpus=table,
    )
    assert set(out) == {"composition", "neurons"}
    s = json.loads((tmp_path / "go/composition/summary.json").read_text())
    assert s["random_model_control"]["dictionary"] == "neurons"
    assert s["population_size"]["BP"] == incidences["BP"].pop_size < N_PROTEINS
    assert 0 <= s["bh"]["pct_features_with_hit"] <= 100 and s["n_features"] == 7
    assert "mean_pct_features_with_hit_bh" in s["permutation_control"]
    hits = np.load(tmp_path / "go/composition/hits.npz", allow_pickle=False)
    assert set(hits.files) == set(HIT_COLUMNS) and hits["p_value"].size == s["n_stored_hits"] > 0
    terms = (tmp_path / "go/terms.tsv").read_text().splitlines()
    assert terms[0].split("\t") == [
        "id",
        "name",
        "namespace",
        "depth",
        "level",
        "definition",
        "parents",
    ]
    assert set(hits["go_id"]) <= {line.split("\t")[0] for line in terms[1:]}
    # Both protocols, each stating its settings; the paper's over the (all human) population.
    assert set(s["protocols"]) == {"strict", "paper"}
    paper = s["protocols"]["paper"]
    assert paper["settings"]["namespaces"] == ["BP"] and "two-sided" in paper["settings"]["test"]
    assert paper["population_size"] == N_PROTEINS  # annotated or not, as goatools' pop_n
    assert s["protocols"]["strict"]["settings"]["propagation"] == "is_a + part_of"
    paper_hits = np.load(tmp_path / "go/composition/paper_hits.npz", allow_pickle=False)
    assert set(paper_hits.files) == set(PAPER_COLUMNS)
    assert (paper_hits["p_bonferroni"] < 0.05).all()
    assert paper_hits["p_value"].size == paper["n_significant_tests"]
    assert set(paper_hits["go_id"]) <= {line.split("\t")[0] for line in terms[1:]}
    assert (tmp_path / "go/DONE").exists() and (tmp_path / "go/neurons/DONE").exists()
    stamp = (tmp_path / "go/neurons/hits.npz").stat().st_mtime_ns
    run_go_stage(
        tmp_path,
        cfg,
        dictionaries=["composition"],
        control_of={"composition": "neurons"},
        corpus=table,
    )
    assert (tmp_path / "go/neurons/hits.npz").stat().st_mtime_ns == stamp  # resumed, not redone


def test_stage_in_parallel_workers_equals_serial(
    tmp_path: Path,
    shared_dir: Path,
    table: ProteinTable,
    neurons: sp.csr_matrix,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dictionaries enriched in forked workers give the very files of a serial run, and the
    worker count is not part of the config digest (changing it redoes nothing)."""
    import trainer.engines.local as local_engine

    pools: list[int] = []

    class CountingPool(local_engine.ProcessPoolExecutor):
        def __init__(self, max_workers: int, **kwargs: Any) -> None:
            pools.append(max_workers)
            super().__init__(max_workers, **kwargs)

    monkeypatch.setattr(local_engine, "ProcessPoolExecutor", CountingPool)
    outputs = {}
    for workers in (1, 2):
        root = tmp_path / f"workers{workers}"
        for name, x in (("neurons", neurons), ("composition", composition_features(table))):
            (root / "analysis" / name).mkdir(parents=True)
            sp.save_npz(root / "analysis" / name / "protein_activations.npz",
                        sp.csr_matrix(x, dtype=np.float32))  # fmt: skip
        # Ranges of 32 features: the 192 neurons run as 6 units per annotation set.
        cfg = GoConfig(obo_path=shared_dir / "data/go/go-basic.obo.gz", workers=workers,
                       block_size=16, chunk_features=32)  # fmt: skip
        out = run_go_stage(root, cfg, dictionaries=["composition", "neurons"], corpus=table)
        for summary in out.values():
            summary["config"].pop("workers")
            summary.pop("seconds")
        outputs[workers] = (out, root)
    (serial, serial_root), (parallel, parallel_root) = outputs[1], outputs[2]
    assert pools == [2]  # the serial run used no pool, the parallel one two worker processes
    assert serial == parallel
    for name in ("composition", "neurons"):
        a = np.load(serial_root / "go" / name / "hits.npz", allow_pickle=False)
        b = np.load(parallel_root / "go" / name / "hits.npz", allow_pickle=False)
        for column in HIT_COLUMNS:
            np.testing.assert_array_equal(a[column], b[column], err_msg=f"{name}:{column}")
    assert GoConfig(workers=1).digest() == GoConfig(workers=3, chunk_features=512).digest()
    with pytest.raises(ValueError, match=r"multiple of go\.block_size"):
        GoConfig(block_size=64, chunk_features=100)


def test_activation_rows_must_match_corpus(
    tmp_path: Path, shared_dir: Path, table: ProteinTable
) -> None:
    (tmp_path / "analysis/short").mkdir(parents=True)
    path = tmp_path / "analysis/short/protein_activations.npz"
    sp.save_npz(path, sp.csr_matrix(composition_features(table)[:10]))
    cfg = GoConfig(obo_path=shared_dir / "data/go/go-basic.obo.gz", n_permutations=0)
    with pytest.raises(
        RuntimeError, match=r"'short' failed: .*protein_activations\.npz: 10 rows"
    ) as info:
        run_go_stage(tmp_path, cfg, dictionaries=["short"], corpus=table)
    assert isinstance(info.value.__cause__, ValueError)


def test_a_failing_dictionary_in_a_worker_is_named(
    tmp_path: Path, shared_dir: Path, table: ProteinTable
) -> None:
    """In parallel, the error from a worker names its dictionary and keeps the cause; the
    dictionary that succeeded is finished and kept for the rerun."""
    features = composition_features(table)
    for name, x in (("good", features), ("short", features[:10])):
        (tmp_path / "analysis" / name).mkdir(parents=True)
        sp.save_npz(tmp_path / "analysis" / name / "protein_activations.npz", sp.csr_matrix(x))
    cfg = GoConfig(obo_path=shared_dir / "data/go/go-basic.obo.gz", n_permutations=0, workers=2)
    with pytest.raises(RuntimeError, match=r"GO enrichment of 'short' failed: .*10 rows"):
        run_go_stage(tmp_path, cfg, dictionaries=["good", "short"], corpus=table)
    assert (tmp_path / "go/good/DONE").exists() and not (tmp_path / "go/short/DONE").exists()
