"""The concepts stage on real residue labels and real activations of the mini ESM2 model.

Activations are the model's ReLU'd neurons (the neuron baseline), so every number here is a real
property of a real model on real BioLiP/ScanNet labels. The bulk metrics are checked against a
slow residue-by-residue Python loop.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from app.esm import LoadedModel
from tests.esm_activations import CachingEncoder
from trainer.concepts import ConceptsConfig, run_concepts_stage
from trainer.concepts.labels import (
    LabelFileError,
    read_concept,
    segment_starts,
    split_role,
    subsample,
)
from trainer.concepts.metrics import (
    INTERPLM_THRESHOLDS,
    SPARSE_BELOW,
    ConceptCounts,
    choose_thresholds,
    count_dense,
    count_sparse,
    normalise,
)
from trainer.concepts.neurons import Encoder, EsmNeurons
from trainer.stamps import read_stamp

LABELS = Path("data/residue_annotations")
MODEL = Path("models/esm2_t4_2M_sprot14mini.pt")
NO_LIMIT = 10**9


@pytest.fixture(scope="module")
def label_dir(shared_dir: Path) -> Path:
    return shared_dir / LABELS


@pytest.fixture(scope="module")
def neurons(shared_dir: Path) -> Iterator[EsmNeurons]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield EsmNeurons(shared_dir / MODEL, [2, 4])
    torch.set_num_threads(threads)


def reference_metrics(
    acts: list[np.ndarray], labels: list[np.ndarray], features: list[int], t: float
) -> dict[str, np.ndarray]:
    """The slow oracle: a plain loop over features, chains and residues."""
    out: dict[str, list[float]] = {k: [] for k in ("precision", "recall", "f1", "site_recall")}
    for f in features:
        fired = tp = npos = sites = sites_hit = 0
        for a, lab in zip(acts, labels, strict=True):
            in_site = hit = False
            for i in range(len(lab)):
                fire = bool(a[i, f] > t)
                fired += fire
                if lab[i]:
                    npos += 1
                    tp += fire
                    if not in_site:
                        sites += 1
                        in_site, hit = True, False
                    if fire and not hit:
                        sites_hit += 1
                        hit = True
                else:
                    in_site = False
        p = tp / fired if fired else 0.0
        r = tp / npos if npos else 0.0
        out["precision"].append(p)
        out["recall"].append(r)
        out["f1"].append(2 * p * r / (p + r) if p + r else 0.0)
        out["site_recall"].append(sites_hit / sites if sites else 0.0)
    return {k: np.array(v) for k, v in out.items()}


# --- labels ------------------------------------------------------------------------------------


def test_source_splits_decide_train_and_test(label_dir: Path) -> None:
    dna = read_concept(label_dir / "gpsite_DNA.tsv.gz", max_length=NO_LIMIT)
    assert (len(dna.train), len(dna.test)) == (661, 146)  # SOURCES.md: train 661, test 146
    ppi = read_concept(label_dir / "graphppis_PPI.tsv.gz", max_length=NO_LIMIT)
    assert {s for c in ppi.train for s in c.source_splits} == {"Train_335"}
    assert {s for c in ppi.test for s in c.source_splits} == {"Test_60", "Test_315", "UBtest_31"}
    ppbs = read_concept(label_dir / "scannet_PPBS.tsv.gz", max_length=NO_LIMIT)
    assert all(s.startswith("validation_") for c in ppbs.train for s in c.source_splits)
    assert all(s.startswith("test_") for c in ppbs.test for s in c.source_splits)
    assert (len(ppbs.train), len(ppbs.test)) == (414 + 1458 + 590 + 754, 554 + 1488 + 915 + 1079)
    bce = read_concept(label_dir / "scannet_BCE.tsv.gz", max_length=NO_LIMIT)
    assert all("fold5" in c.source_splits for c in bce.test)
    assert not any("fold5" in c.source_splits for c in bce.train)
    assert split_role("scannet_PIDPBS", "fold4", {f"fold{i}" for i in range(5)}) == "test"
    assert split_role("scannet_PIDPBS", "fold0", {f"fold{i}" for i in range(5)}) == "train"
    for concept in (dna, ppi, ppbs, bce):
        assert not {c.sequence for c in concept.train} & {c.sequence for c in concept.test}


def test_identical_chains_are_merged_with_union_labels(label_dir: Path) -> None:
    path = label_dir / "scannet_BCE.tsv.gz"
    with gzip.open(path, "rt") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    by_seq: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_seq.setdefault(row["sequence"], []).append(row)
    seq, group = max(by_seq.items(), key=lambda kv: len(kv[1]))
    assert len(group) > 1
    concept = read_concept(path, max_length=NO_LIMIT)
    assert concept.counts["merged_duplicates"] == len(rows) - len(by_seq)
    merged = [c for c in concept.train + concept.test if c.sequence == seq]
    assert len(merged) == 1
    union = np.zeros(len(seq), dtype=bool)
    for row in group:
        union |= np.array([ch == "1" for ch in row["labels"]])
    assert np.array_equal(merged[0].labels, union)


def test_long_chains_are_dropped_and_counted(label_dir: Path) -> None:
    dna = read_concept(label_dir / "gpsite_DNA.tsv.gz")
    assert dna.counts["too_long"] == 21  # chains over 1,022 residues
    assert max(len(c.sequence) for c in dna.train + dna.test) <= 1022


def _write_rows(path: Path, header: str, rows: list[str]) -> None:
    with gzip.open(path, "wt") as handle:
        handle.write(header + "".join(rows))


def test_refuses_a_row_whose_labels_do_not_match(label_dir: Path, tmp_path: Path) -> None:
    with gzip.open(label_dir / "gpsite_ZN.tsv.gz", "rt") as handle:
        header, first, second = handle.readline(), handle.readline(), handle.readline()
    chain, seq, labels, split = second.rstrip("\n").split("\t")
    bad = tmp_path / "gpsite_ZN.tsv.gz"
    _write_rows(bad, header, [first, f"{chain}\t{seq}\t{labels[:-3]}\t{split}\n"])
    with pytest.raises(LabelFileError, match=rf"{bad}:3: chain {chain}: sequence has {len(seq)}"):
        read_concept(bad)
    _write_rows(bad, header, [first, f"{chain}\t{seq}\t{labels[:-1]}2\t{split}\n"])
    with pytest.raises(LabelFileError, match=rf"{bad}:3: chain {chain}: labels contain '2'"):
        read_concept(bad)
    _write_rows(bad, header, [first.replace("\ttrain", "\tholdout")])
    with pytest.raises(LabelFileError, match=r"split 'holdout' has no train/test rule"):
        read_concept(bad)


def test_subsample_is_seeded_and_bounded(label_dir: Path) -> None:
    zn = read_concept(label_dir / "gpsite_ZN.tsv.gz")
    a, b, c = subsample(zn, 30, 0), subsample(zn, 30, 0), subsample(zn, 30, 1)
    assert (len(a.train), len(a.test)) == (30, 30)
    assert [x.pdb_chain for x in a.train] == [x.pdb_chain for x in b.train]
    assert [x.pdb_chain for x in a.train] != [x.pdb_chain for x in c.train]


# --- metrics -----------------------------------------------------------------------------------


def test_site_recall_on_a_hand_checked_chain(label_dir: Path) -> None:
    """MEF2 MADS box 1n6j_A (gpsite_DNA): DNA-binding sites GRKKI 1-5, T19, KR 22-23, KK 29-30."""
    dna = read_concept(label_dir / "gpsite_DNA.tsv.gz")
    chain = next(c for c in dna.train if c.pdb_chain == "1n6j_A")
    assert segment_starts(chain.labels).tolist() == [0, 18, 21, 28]
    assert int(chain.labels.sum()) == 10
    n = len(chain.sequence)
    acts = np.zeros((n, 4), dtype=np.float32)
    acts[2, 0] = 1.0  # inside GRKKI only
    acts[[17, 18, 19], 1] = 0.7  # V18, T19, F20: hits site 2 with one of three residues
    acts[[22, 29], 2] = [0.4, 0.9]  # R23 and K30: two sites; R23 fires only at t < 0.4
    acts[:, 3] = 1.0  # everywhere
    counts = ConceptCounts(4, INTERPLM_THRESHOLDS)
    counts.add(acts, chain.labels, np.array([0]))
    m = counts.metrics()
    t015, t05 = INTERPLM_THRESHOLDS.index(0.15), INTERPLM_THRESHOLDS.index(0.5)
    assert m.site_recall[t015].tolist() == [0.25, 0.25, 0.5, 1.0]
    assert m.site_recall[t05].tolist() == [0.25, 0.25, 0.25, 1.0]
    assert m.precision[t015].tolist() == pytest.approx([1.0, 1 / 3, 1.0, 10 / n])
    assert m.recall[t015].tolist() == pytest.approx([0.1, 0.1, 0.2, 1.0])
    assert counts.n_sites == 4 and counts.n_positive == 10


@pytest.fixture(scope="module")
def pro_chains(label_dir: Path, neurons: EsmNeurons) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """40 real protein-binding chains (GPSite PRO test) and their layer-4 neuron activations."""
    chains = subsample(read_concept(label_dir / "gpsite_PRO.tsv.gz"), 40, 7).test
    encode = neurons.encoder(4)
    acts: list[np.ndarray] = []
    for i in range(0, len(chains), 8):
        acts += encode([c.sequence for c in chains[i : i + 8]])
    return acts, [c.labels for c in chains]


def test_bulk_metrics_match_the_slow_reference(
    pro_chains: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    acts, labels = pro_chains
    fmax = np.max([a.max(axis=0) for a in acts], axis=0)
    normed = [normalise(a, fmax) for a in acts]
    counts = ConceptCounts(fmax.shape[0], INTERPLM_THRESHOLDS)
    for lo, hi in ((0, 13), (13, 14), (14, 40)):  # uneven blocks of whole chains
        block = np.concatenate(normed[lo:hi])
        starts = np.concatenate(([0], np.cumsum([len(x) for x in labels[lo:hi]])[:-1]))
        counts.add(block, np.concatenate(labels[lo:hi]), starts)
    bulk = counts.metrics()
    assert bulk.f1.max() > 0.1  # real, non-trivial signal to compare
    features = [*np.argsort(-bulk.f1[1])[:4].tolist(), 0, 57, 191]
    for ti, t in enumerate(INTERPLM_THRESHOLDS):
        ref = reference_metrics(normed, labels, features, t)
        for name, values in ref.items():
            np.testing.assert_allclose(getattr(bulk, name)[ti, features], values, rtol=1e-12)


def test_sparse_and_dense_counting_agree(
    pro_chains: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    """Both ways of counting, on real neurons (dense) and on them kept to the top 3 per residue
    (as sparse as a TopK SAE); ``add`` picks the sparse way only for the sparse block."""
    acts, labels = pro_chains
    dense = normalise(np.concatenate(acts), np.max([a.max(axis=0) for a in acts], axis=0))
    top3 = np.zeros_like(dense)
    keep = np.argsort(-dense, axis=1)[:, :3]
    np.put_along_axis(top3, keep, np.take_along_axis(dense, keep, axis=1), axis=1)
    lab = np.concatenate(labels).astype(bool)
    thresholds = np.asarray(INTERPLM_THRESHOLDS, dtype=np.float32)
    for block in (dense, top3):
        want = count_dense(block, lab, thresholds)
        got = count_sparse(block, lab, thresholds)
        assert want[0].sum() > 0 and want[1].sum() > 0
        for a, b in zip(want, got, strict=True):
            np.testing.assert_array_equal(a, b)
        counts = ConceptCounts(block.shape[1], INTERPLM_THRESHOLDS)
        counts.add(block, lab, np.array([0]))
        np.testing.assert_array_equal(counts.fired, want[0])
    assert np.count_nonzero(top3) / top3.size < SPARSE_BELOW < np.count_nonzero(dense) / dense.size


def test_threshold_is_chosen_on_train_only(
    pro_chains: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    acts, labels = pro_chains
    fmax = np.max([a.max(axis=0) for a in acts], axis=0)
    halves = []
    for part in (slice(0, 20), slice(20, 40)):
        c = ConceptCounts(fmax.shape[0], INTERPLM_THRESHOLDS)
        for a, lab in zip(acts[part], labels[part], strict=True):
            c.add(normalise(a, fmax), lab, np.array([0]))
        halves.append(c.metrics())
    pair = choose_thresholds(halves[0], halves[1], INTERPLM_THRESHOLDS)
    np.testing.assert_array_equal(pair.threshold_index, np.argmax(halves[0].f1, axis=0))
    cols = np.arange(fmax.shape[0])
    np.testing.assert_array_equal(pair.test["f1"], halves[1].f1[pair.threshold_index, cols])
    swapped = choose_thresholds(halves[1], halves[0], INTERPLM_THRESHOLDS)
    assert not np.array_equal(swapped.threshold_index, pair.threshold_index)


# --- the stage ---------------------------------------------------------------------------------

STAGE_CONCEPTS = ["gpsite_ZN", "gpsite_PRO", "graphppis_PPI", "scannet_PIDPBS"]


@pytest.mark.slow
def test_stage_end_to_end_on_neurons(label_dir: Path, neurons: EsmNeurons, tmp_path: Path) -> None:
    cfg = ConceptsConfig(
        label_dir=label_dir, concepts=STAGE_CONCEPTS, max_chains_per_split=20, seed=3
    )
    encoders = {"neurons_L2": CachingEncoder(neurons, 2), "neurons_L4": CachingEncoder(neurons, 4)}
    names = list(encoders)
    summaries = run_concepts_stage(
        tmp_path, cfg, encode_residues=dict(encoders), dictionaries=names
    )
    out = tmp_path / "concepts"
    assert (out / "DONE").exists()
    records = json.loads((out / "concepts.json").read_text())
    assert [r["name"] for r in records] == sorted(STAGE_CONCEPTS)
    for r in records:
        assert r["n_chains"] == r["splits"]["train"]["n_chains"] + r["splits"]["test"]["n_chains"]
        assert 0 < r["n_positive"] < r["n_residues"]
    assert 100 <= len(encoders["neurons_L4"].cache) <= 160  # PRO and PPI share chains

    # Re-derive one concept's metrics from the raw activations with the slow oracle.
    cache = encoders["neurons_L4"].cache
    fmax = np.max([a.max(axis=0) for a in cache.values()], axis=0)
    concepts = {
        c.name: c
        for c in (subsample(read_concept(label_dir / f"{n}.tsv.gz"), 20, 3) for n in STAGE_CONCEPTS)
    }
    z = np.load(out / "neurons_L4" / "alignments.npz", allow_pickle=False)
    summary = summaries["neurons_L4"]
    assert summary == json.loads((out / "neurons_L4" / "summary.json").read_text())
    best = {b["concept"]: b for b in summary["best_per_concept"]}
    assert set(best) == set(STAGE_CONCEPTS)
    for name in ("gpsite_PRO", "gpsite_ZN"):
        b = best[name]
        test = concepts[name].test
        ref = reference_metrics(
            [normalise(cache[c.sequence], fmax) for c in test],
            [c.labels for c in test],
            [b["feature"]],
            b["threshold"],
        )
        assert b["f1_test"] == pytest.approx(ref["f1"][0], rel=1e-9)
        assert b["site_recall_test"] == pytest.approx(ref["site_recall"][0], rel=1e-9)
        base = np.concatenate([c.labels for c in test]).mean()
        assert b["f1_fire_everywhere_test"] == pytest.approx(2 * base / (1 + base))
        row = (z["concept"] == name) & (z["feature_index"] == b["feature"]) & (z["split"] == "test")
        assert row.sum() == 1 and z["f1"][row][0] == pytest.approx(b["f1_test"], rel=1e-6)
    assert summary["n_concepts_associated"] == sum(
        b["f1_test"] > 0.5 for b in summary["best_per_concept"]
    )
    # every concept keeps at least its top 20 pairs, on both splits
    for name in STAGE_CONCEPTS:
        assert (z["concept"] == name).sum() >= 2 * 20

    # Finished with the same inputs: nothing is encoded again.
    def refuse(_: list[str]) -> list[np.ndarray]:
        raise AssertionError("a finished stage re-encoded")

    again = run_concepts_stage(
        tmp_path, cfg, encode_residues=dict.fromkeys(names, refuse), dictionaries=names
    )
    assert again == summaries
    # Finished by a trainer from before stamps (DONE "ok", same manifest): stamped, not redone.
    (out / "DONE").write_text("ok\n")
    again = run_concepts_stage(
        tmp_path, cfg, encode_residues=dict.fromkeys(names, refuse), dictionaries=names
    )
    assert again == summaries and read_stamp(out / "DONE") not in (None, "ok")


def test_stage_refuses_misshapen_activations(label_dir: Path, tmp_path: Path) -> None:
    cfg = ConceptsConfig(label_dir=label_dir, concepts=["gpsite_HEM"], max_chains_per_split=2)

    def short(seqs: list[str]) -> list[np.ndarray]:
        return [np.ones((len(s) - 1, 8), dtype=np.float32) for s in seqs]

    encoders: dict[str, Encoder] = {"broken": short}
    with pytest.raises(ValueError, match=r"dictionary broken: activations of shape"):
        run_concepts_stage(tmp_path, cfg, encode_residues=encoders, dictionaries=["broken"])
    with pytest.raises(ValueError, match=r"no encoder given for dictionary\(ies\) other"):
        run_concepts_stage(tmp_path, cfg, encode_residues=encoders, dictionaries=["other"])


# --- shared representations --------------------------------------------------------------------


def test_shared_representations_run_the_model_once_per_batch(
    loaded: LoadedModel, label_dir: Path
) -> None:
    """Three dictionaries on two layers, two passes: one forward per batch, same numbers."""
    from app.esm import embed_sequences
    from app.sae import NeuronBasis
    from trainer.concepts.representations import SharedRepresentations

    chains = subsample(read_concept(label_dir / "gpsite_ZN.tsv.gz"), 6, 3).test
    batches = [[c.sequence for c in chains[:3]], [c.sequence for c in chains[3:]]]
    shared = SharedRepresentations(max_bytes=2**30)
    basis = NeuronBasis(loaded.embed_dim)
    enc3 = shared.encoder(loaded, 3, basis.encode)
    enc4 = shared.encoder(loaded, 4, basis.encode)
    doubled = shared.encoder(loaded, 3, lambda x: 2 * basis.encode(x))
    for _ in range(2):
        for seqs in batches:
            a3, a4, d3 = enc3(seqs), enc4(seqs), doubled(seqs)
            ref = embed_sequences(loaded, seqs, [3, 4])
            for i, seq in enumerate(seqs):
                assert a3[i].shape == (len(seq), loaded.embed_dim)
                for layer, got in ((3, a3[i]), (4, a4[i])):
                    want = np.maximum(ref[i][layer].astype(np.float16).astype(np.float32), 0)
                    np.testing.assert_array_equal(got, want)
                np.testing.assert_array_equal(d3[i], 2 * a3[i])
    assert shared.forward_passes == len(batches)
    assert shared.kept_bytes == 2 * 2 * sum(len(s) for b in batches for s in b) * loaded.embed_dim


def test_shared_representations_recompute_beyond_their_budget(
    loaded: LoadedModel, label_dir: Path
) -> None:
    from app.sae import NeuronBasis
    from trainer.concepts.representations import SharedRepresentations

    chains = subsample(read_concept(label_dir / "gpsite_ZN.tsv.gz"), 4, 3).test
    batches = [[c.sequence] for c in chains]
    shared = SharedRepresentations(max_bytes=0)
    enc = shared.encoder(loaded, 2, NeuronBasis(loaded.embed_dim).encode)
    first = [enc(b)[0] for b in batches]
    second = [enc(b)[0] for b in batches]
    assert shared.forward_passes == 2 * len(batches) and shared.kept_bytes == 0
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="not registered"):
        shared.get(loaded, 1, batches[0])
