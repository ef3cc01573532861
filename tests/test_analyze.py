"""Analyze's batched tensor code against plain per-protein / per-feature references.

Real embeddings of real proteins (the mini ESM2 model), a seeded random dictionary (what is
checked is the bookkeeping, not what the features mean), on the device ``auto`` picks.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from app.esm import LoadedModel
from app.residue_types import ALPHABET, N_TYPES
from app.sae import NeuronBasis, TopKSAE, Transcoder, sequence_fve
from app.structure_coverage import best_chain
from tests.realdata import human_proteins
from trainer.aa_profile import BASIS_CORPUS, BASIS_EXAMPLES, AaMass, load_profile
from trainer.analyze import AnalyzeConfig, Spec, run_analyze
from trainer.embed import EmbedConfig, run_embed
from trainer.embedding_store import EmbeddingStore, ResiduesNotStoredError
from trainer.feature_rankings import protein_top_features
from trainer.feature_stats import feature_stats, select_examples
from trainer.protein_activations import _fve, per_protein_fve, protein_activations
from trainer.residue_replay import model_residue_source
from trainer.residue_tracks import residue_tracks, structure_coverage
from trainer.structure_coverage import Chain, chains_by_protein

MODEL = Path("models/esm2_t4_2M_sprot14mini.pt")
CFG = AnalyzeConfig(batch_size=100, max_residues_per_batch=900, max_residues_per_track_batch=700)


@pytest.fixture(scope="module")
def corpus(shared_dir: Path) -> list[str]:
    torch.set_num_threads(2)
    rows = human_proteins(shared_dir, 120)
    return [r["sequence"] for r in rows if len(r["sequence"]) <= 300][:40]


def _embed_cfg(shared_dir: Path, **update: object) -> EmbedConfig:
    return EmbedConfig(model=str(shared_dir / MODEL), layers=[3, 4], shard_max_residues=3000,
                       device="cpu", **update)  # fmt: skip


@pytest.fixture(scope="module")
def store(
    shared_dir: Path, corpus: list[str], tmp_path_factory: pytest.TempPathFactory
) -> EmbeddingStore:
    workdir = tmp_path_factory.mktemp("analyze")
    run_embed(workdir, corpus, _embed_cfg(shared_dir))
    return EmbeddingStore(workdir / "embeddings")


@pytest.fixture(scope="module")
def pooled_store(
    shared_dir: Path, corpus: list[str], tmp_path_factory: pytest.TempPathFactory
) -> EmbeddingStore:
    """The same proteins with layer 4 stored pooled-only (its residues not on disk)."""
    workdir = tmp_path_factory.mktemp("analyze-pooled")
    run_embed(workdir, corpus, _embed_cfg(shared_dir, residue_layers=[3]))
    return EmbeddingStore(workdir / "embeddings")


def _chains(store: EmbeddingStore, every: int) -> dict[int, list[Chain]]:
    """Stand-ins for structure chains on every ``every``-th protein, two each like a protein
    with an N-terminal and a C-terminal fragment solved: the first half, and the second half
    with a 5-residue unresolved loop. What analyze is checked for is the bookkeeping of which
    residues a chain resolves, not which ones real chains resolve."""
    pairs = []
    for p in range(0, store.n_proteins, every):
        n = int(store.lengths[p])
        pairs.append((p, list(range(n // 2))))
        pairs.append((p, [i for i in range(n // 2, n) if not n // 2 + 10 <= i < n // 2 + 15]))
    return chains_by_protein(pairs, store.lengths)


def _sae(d: int = 192, seed: int = 0) -> TopKSAE:
    torch.manual_seed(seed)
    module = TopKSAE(d, 2 * d, k=8)
    with torch.no_grad():
        module.b_enc.uniform_(-0.5, 0.5)
    return module.eval()


def test_residue_level_activations_are_per_protein_maxima(store: EmbeddingStore) -> None:
    module = _sae()
    acts, residue_active, n_residues = protein_activations(
        module, Spec("r", "residue", 3), store, CFG
    )
    expected = np.zeros((store.n_proteins, module.n_latents), dtype=np.float32)
    fired = np.zeros(module.n_latents, dtype=np.int64)
    with torch.inference_mode():
        for p in range(store.n_proteins):
            z = module.encode(torch.from_numpy(store.residues(3, p))).numpy()
            expected[p] = z.max(axis=0)
            fired += (z > 0).sum(axis=0)
    assert isinstance(acts, sp.csr_matrix) and acts.shape == expected.shape
    np.testing.assert_array_equal(acts.toarray(), expected)
    np.testing.assert_array_equal(residue_active, fired)
    assert n_residues[0] == store.lengths.sum()


def test_residue_level_profile_sums_activation_per_residue_type(
    store: EmbeddingStore, corpus: list[str]
) -> None:
    """The one-pass profile (batched, on the module's device) is each residue type's summed
    activation, residue by residue, and the background is the corpus's composition."""
    module = _sae()
    mass = AaMass(corpus, module.n_latents, torch.device("cpu"))
    _, residue_active, _ = protein_activations(module, Spec("r", "residue", 3), store, CFG,
                                               aa_out=mass)  # fmt: skip
    profile = mass.result()
    expected = np.zeros((module.n_latents, N_TYPES))
    letters = np.zeros(N_TYPES)
    with torch.inference_mode():
        for p, sequence in enumerate(corpus):
            z = module.encode(torch.from_numpy(store.residues(3, p))).double().numpy()
            for position, letter in enumerate(sequence):
                t = ALPHABET.index(letter) if letter in ALPHABET else N_TYPES - 1
                expected[:, t] += z[position]
                letters[t] += 1
    np.testing.assert_allclose(profile.mass, expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(profile.n_residues, residue_active)
    np.testing.assert_allclose(profile.background, letters / letters.sum())
    shares = profile.shares()
    live = profile.mass.sum(axis=1) > 0
    np.testing.assert_allclose(shares[live].sum(axis=1), 1.0, rtol=1e-5)
    assert profile.basis == BASIS_CORPUS


def test_protein_level_activations_encode_pooled_vectors(store: EmbeddingStore) -> None:
    module = _sae()
    acts, residue_active, _ = protein_activations(module, Spec("p", "protein", 3), store, CFG)
    with torch.inference_mode():
        expected = module.encode(torch.from_numpy(store.pooled(3))).numpy()
    np.testing.assert_array_equal(acts.toarray(), expected)
    assert acts.nnz == (expected > 0).sum() and not residue_active.any()


@pytest.mark.parametrize("level", ["residue", "protein"])
def test_per_protein_fve_is_sequence_fve(store: EmbeddingStore, level: str) -> None:
    module = _sae()
    fve = per_protein_fve(module, Spec("f", level, 3), store, CFG)
    assert fve is not None
    with torch.inference_mode():
        for p in range(store.n_proteins):
            x = torch.from_numpy(
                store.residues(3, p) if level == "residue" else store.pooled(3)[p : p + 1]
            )
            assert fve[p] == pytest.approx(sequence_fve(x, module(x)[0]), abs=1e-5)
    assert per_protein_fve(NeuronBasis(192), Spec("n", level, 3), store, CFG) is None


def test_fve_of_one_residue_proteins_centres_over_dimensions() -> None:
    gen = torch.Generator().manual_seed(0)
    x, recon = torch.randn(7, 5, generator=gen), torch.randn(7, 5, generator=gen)
    offsets = np.array([0, 1, 4, 5, 7])  # lengths 1, 3, 1, 2
    got = _fve(x, recon, offsets).numpy()
    want = [sequence_fve(x[a:b], recon[a:b]) for a, b in itertools.pairwise(offsets)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_feature_stats_match_numpy_histograms(store: EmbeddingStore) -> None:
    module = _sae()
    acts, residue_active, n_res = protein_activations(module, Spec("r", "residue", 3), store, CFG)
    stats = feature_stats(acts, CFG, residue_active, float(n_res[0]))
    csc = acts.tocsc()
    assert stats["is_dead"].any() and not stats["is_dead"].all()
    for f in range(acts.shape[1]):
        values = csc.data[csc.indptr[f] : csc.indptr[f + 1]]
        assert stats["n_active"][f] == values.size
        if values.size == 0:
            assert stats["max_activation"][f] == 0 and not stats["hist_counts"][f].any()
            continue
        counts, edges = np.histogram(values, bins=CFG.n_hist_bins, range=(0.0, float(values.max())))
        assert stats["max_activation"][f] == values.max()
        assert stats["mean_activation"][f] == pytest.approx(values.mean(), rel=1e-6)
        np.testing.assert_array_equal(stats["hist_counts"][f], counts)
        np.testing.assert_array_equal(stats["hist_edges"][f], edges.astype(np.float32))


def test_protein_top_features_rank_each_row() -> None:
    dense = np.array([[0, 3, 1, 3, 0], [0, 0, 0, 0, 0], [2, 0, 5, 1, 4]], dtype=np.float32)
    got = protein_top_features(sp.csr_matrix(dense), 2)
    assert got == [(0, 1, 0, 3.0), (0, 3, 1, 3.0), (2, 2, 0, 5.0), (2, 4, 1, 4.0)]


@pytest.mark.parametrize("level", ["residue", "protein"])
def test_residue_tracks_match_one_protein_at_a_time(store: EmbeddingStore, level: str) -> None:
    modules = [_sae(), NeuronBasis(192)]
    if level == "protein":
        torch.manual_seed(1)
        modules.append(Transcoder(192, 384, 192, encoder_kind="topk", k=8).eval())
    wanted = {p: [int(f) for f in np.random.default_rng(p).choice(192, 3, replace=False)]
              for p in range(0, store.n_proteins, 3)}  # fmt: skip
    for module in modules:
        tracks = residue_tracks(module, Spec("t", level, 3), store, wanted, max_residues=700)
        assert set(tracks) == {(f, p) for p, fs in wanted.items() for f in fs}
        with torch.inference_mode():
            for p, feats in wanted.items():
                r = torch.from_numpy(store.residues(3, p))
                full = module.encode(r) if level == "residue" else module.residue_attribution(r)
                for f in feats:
                    np.testing.assert_allclose(
                        tracks[(f, p)], full[:, f].numpy(), rtol=1e-4, atol=1e-6
                    )


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_run_analyze_writes_the_same_files_on_any_device(
    store: EmbeddingStore, tmp_path: Path, device: str
) -> None:
    chains = _chains(store, every=7)
    outs = []
    for run, dev in (("ref", "cpu"), ("dev", device)):
        cfg = CFG.model_copy(update={"device": dev})
        outs.append(
            run_analyze(tmp_path / run, _sae(), Spec("a", "residue", 3), store, chains, cfg)
        )
    for name in ("features.npz", "examples.npz", "protein_top.npz", "neighbors.npz"):
        ref, other = np.load(outs[0] / name), np.load(outs[1] / name)
        for key in ref.files:
            if ref[key].dtype.kind == "f":  # a GPU may round differently
                np.testing.assert_allclose(ref[key], other[key], rtol=1e-5)
            else:
                np.testing.assert_array_equal(ref[key], other[key])
    assert (outs[1] / "DONE").exists()


def test_tracks_of_a_pooled_only_layer_come_from_the_model(
    store: EmbeddingStore, pooled_store: EmbeddingStore, corpus: list[str], loaded: LoadedModel
) -> None:
    """Residues recomputed by the model give the tracks the float16 shards give."""
    source = model_residue_source(pooled_store, loaded, corpus)
    wanted = {p: [int(f) for f in np.random.default_rng(p).choice(192, 4, replace=False)]
              for p in range(0, store.n_proteins, 2)}  # fmt: skip
    torch.manual_seed(1)
    transcoder = Transcoder(192, 384, 192, encoder_kind="topk", k=8).eval()
    spec = Spec("t", "protein", 4)
    with pytest.raises(ResiduesNotStoredError, match="layer 4 was embedded pooled-only"):
        residue_tracks(_sae(), spec, pooled_store, wanted)  # no source: a clear error
    # The model runs on all proteins at once, or on groups of a few track batches.
    for module, fetch in ((_sae(), 65_536), (NeuronBasis(192), 1500), (transcoder, 1)):
        shards = residue_tracks(module, spec, store, wanted, max_residues=700)
        model = residue_tracks(module, spec, pooled_store, wanted, 700, source, fetch)
        assert model.keys() == shards.keys()
        for key, values in shards.items():
            # Inputs differ by at most one float16 step (other batches, other float noise);
            # measured: at most 3e-4 of the track's scale.
            scale = float(np.abs(values).max())
            np.testing.assert_allclose(model[key], values, rtol=0, atol=1e-3 * scale + 1e-7)


def test_run_analyze_on_a_pooled_only_layer_matches_the_shards(
    store: EmbeddingStore,
    pooled_store: EmbeddingStore,
    corpus: list[str],
    loaded: LoadedModel,
    tmp_path: Path,
) -> None:
    chains = _chains(store, every=5)
    spec = Spec("p4", "protein", 4)
    ref = run_analyze(tmp_path / "ref", _sae(), spec, store, chains, CFG)
    source = model_residue_source(pooled_store, loaded, corpus)
    got = run_analyze(tmp_path / "got", _sae(), spec, pooled_store, chains, CFG, source)
    for name in ("features.npz", "examples.npz", "protein_top.npz", "neighbors.npz"):
        a, b = np.load(ref / name), np.load(got / name)
        for key in a.files:
            if key == "values":  # float16 tracks, within 1e-3 of their scale (measured 2e-4)
                scale = float(np.abs(a[key].astype(np.float32)).max())
                np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-3 * scale)
            elif key == "max_position":  # a near tie may flip between float16 neighbours
                assert np.mean(a[key] == b[key]) > 0.95
            elif key == "structure_share":
                np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-3)
            else:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")


@pytest.mark.parametrize("level", ["protein", "residue"])
def test_run_analyze_writes_amino_acid_profiles(
    store: EmbeddingStore, corpus: list[str], tmp_path: Path, level: str
) -> None:
    """Residue level: the whole corpus pass; protein level: the positive attribution of the
    feature's example tracks (each example protein once), by residue type."""
    out = run_analyze(tmp_path, _sae(), Spec("a", level, 3), store, _chains(store, every=5), CFG,
                      sequences=corpus)  # fmt: skip
    profile = load_profile(out / "aa_profile.npz")
    assert profile is not None and profile.mass.shape == (384, N_TYPES)
    summary = json.loads((out / "summary.json").read_text())["aa_profile"]
    assert summary["alphabet"] == ALPHABET and len(summary["background"]) == N_TYPES
    if level == "residue":
        assert profile.basis == summary["basis"] == BASIS_CORPUS
        return
    assert profile.basis == summary["basis"] == BASIS_EXAMPLES
    ex = np.load(out / "examples.npz")
    expected = np.zeros((384, N_TYPES))
    seen = set()
    for i, (f, p) in enumerate(zip(ex["feature"].tolist(), ex["protein"].tolist(), strict=True)):
        if (f, p) in seen:  # a top protein with a structure is also a structure example
            continue
        seen.add((f, p))
        values = ex["values"][ex["offsets"][i] : ex["offsets"][i + 1]].astype(np.float64)
        for letter, v in zip(corpus[p], values, strict=True):
            expected[f, ALPHABET.index(letter) if letter in ALPHABET else N_TYPES - 1] += max(v, 0)
    # The stored tracks are float16; the profile sums the float32 tracks they were rounded from.
    np.testing.assert_allclose(profile.mass, expected, rtol=2e-3, atol=1e-3)


def test_the_weightless_neuron_basis_goes_where_it_is_moved() -> None:
    """Analyze runs a dictionary where its tensors are; the neuron baseline has no weights but
    must follow ``.to()`` like the SAEs (it ran on the CPU beside a GPU before)."""
    from trainer.protein_activations import device_of

    moved = NeuronBasis(6).to("meta")
    assert device_of(moved).type == "meta"
    assert moved.decoder_directions().device.type == "meta"
    assert device_of(NeuronBasis(6)).type == "cpu"
    assert "anchor" not in NeuronBasis(6).state_dict()


@pytest.mark.parametrize("level", ["residue", "protein"])
def test_structure_coverage_matches_one_chain_at_a_time(store: EmbeddingStore, level: str) -> None:
    """Every active (feature, protein) pair with a chain gets the chain, share and peak that
    ``app.structure_coverage.best_chain`` finds on the protein's full per-residue values."""
    module, spec = _sae(), Spec("c", level, 3)
    chains = _chains(store, every=3)
    acts, *_ = protein_activations(module, spec, store, CFG)
    got = structure_coverage(module, spec, store, acts, chains, CFG)
    dense = acts.toarray()
    expected = {(f, p) for p in chains for f in np.flatnonzero(dense[p] > 0).tolist()}
    assert set(got.index()) == expected and len(got.feature) == len(expected)
    assert got.peak_covered.any() and not got.peak_covered.all()
    with torch.inference_mode():
        for row, (f, p) in enumerate(zip(got.feature.tolist(), got.protein.tolist(), strict=True)):
            r = torch.from_numpy(store.residues(3, p))
            full = module.encode(r) if level == "residue" else module.residue_attribution(r)
            found = best_chain(full[:, f].numpy(), [c.positions.tolist() for c in chains[p]])
            assert found is not None
            index, want = found
            assert got.chain[row] == chains[p][index].index
            assert bool(got.peak_covered[row]) == want.peak_covered
            assert got.covered_mass[row] == pytest.approx(want.covered_mass, rel=1e-4, abs=1e-6)
            if want.activation_share is None:
                assert np.isnan(got.activation_share[row])
            else:
                assert got.activation_share[row] == pytest.approx(want.activation_share, abs=1e-5)


def test_structure_examples_show_their_peak_first(store: EmbeddingStore) -> None:
    """The structure group takes the proteins whose best chain resolves the peak, most covered
    activation mass first; a protein whose chains miss the peak comes only after all of those."""
    module, spec = _sae(), Spec("s", "residue", 3)
    chains = _chains(store, every=2)
    acts, *_ = protein_activations(module, spec, store, CFG)
    covered = structure_coverage(module, spec, store, acts, chains, CFG)
    cfg = CFG.model_copy(update={"n_structure": 3})
    chosen = [
        (f, p, r) for f, p, b, r, _ in select_examples(acts, covered, cfg) if b == "structure"
    ]
    where = covered.index()

    def key(f: int, p: int) -> tuple[bool, float]:
        row = where[(f, p)]
        return bool(covered.peak_covered[row]), float(covered.covered_mass[row])

    by_feature: dict[int, list[int]] = {}
    for f, p, r in chosen:
        assert r == len(by_feature.setdefault(f, []))
        by_feature[f].append(p)
    assert by_feature and set(by_feature) == set(covered.feature.tolist())
    reordered = 0
    for f, proteins in by_feature.items():
        keys = [key(f, p) for p in proteins]
        assert keys == sorted(keys, reverse=True)
        rest = [key(f, p) for (g, p) in where if g == f and p not in proteins]
        assert len(proteins) == 3 or not rest
        assert all(k <= keys[-1] for k in rest)
        by_max = sorted((p for (g, p) in where if g == f), key=lambda p: -acts[p, f])[:3]
        reordered += by_max != proteins
    assert reordered > 0  # the rule differs from "most active proteins with a structure"
