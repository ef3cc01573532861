"""``embed.residue_proteins``: residues stored for a seeded sample of proteins only, training
drawing from it, analysis recomputing the others' residues exactly (``trainer.residue_replay``).

Real proteins (a long one windowed), the real mini model, small shards and token budgets so a
shard holds several forward batches; the full store of the same corpus is the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors import safe_open

from app.esm import LoadedModel
from app.sae import TopKSAE
from tests.conftest import MINI_MODEL
from tests.realdata import human_proteins
from trainer.analyze import AnalyzeConfig, Spec, run_analyze
from trainer.embed import EmbedConfig, run_embed
from trainer.embedding_store import EmbeddingStore, ResiduesNotStoredError
from trainer.feature_map import MapConfig
from trainer.layout import EmbeddingFiles
from trainer.residue_replay import ReplayedResidues
from trainer.residue_sample import choose_residue_proteins
from trainer.residue_tracks import residue_tracks
from trainer.structure_coverage import chains_by_protein

SAMPLE, SEED = 8, 3
# No feature map: UMAP is the same code either way, and its first call compiles for seconds.
CFG = AnalyzeConfig(batch_size=100, max_residues_per_batch=900, max_residues_per_track_batch=700,
                    device="cpu", map=MapConfig(enabled=False))  # fmt: skip


@pytest.fixture(scope="module")
def corpus(shared_dir: Path) -> list[str]:
    rows = human_proteins(shared_dir, 400)
    short = [r["sequence"] for r in rows if len(r["sequence"]) <= 220][:24]
    long = next(r["sequence"] for r in rows if 1100 < len(r["sequence"]) < 1600)  # 3 windows
    return [*short[:12], long, *short[12:]]


def _config(shared_dir: Path, **update: object) -> EmbedConfig:
    return EmbedConfig(model=str(shared_dir / MINI_MODEL), layers=[3, 4], residue_layers=[3],
                       shard_max_residues=2000, max_tokens_per_batch=1200, device="cpu",
                       **update)  # fmt: skip


@pytest.fixture(scope="module")
def full(
    shared_dir: Path, corpus: list[str], tmp_path_factory: pytest.TempPathFactory
) -> EmbeddingStore:
    workdir = tmp_path_factory.mktemp("full")
    run_embed(workdir, corpus, _config(shared_dir))
    return EmbeddingStore(workdir / "embeddings")


@pytest.fixture(scope="module")
def sampled(
    shared_dir: Path, corpus: list[str], tmp_path_factory: pytest.TempPathFactory
) -> EmbeddingStore:
    workdir = tmp_path_factory.mktemp("sampled")
    run_embed(workdir, corpus, _config(shared_dir, residue_proteins=SAMPLE), residue_seed=SEED)
    return EmbeddingStore(workdir / "embeddings")


@pytest.fixture(scope="module")
def replay(sampled: EmbeddingStore, loaded: LoadedModel, corpus: list[str]) -> ReplayedResidues:
    return ReplayedResidues(sampled, loaded, corpus)


def _residue_bytes(store: EmbeddingStore) -> int:
    total = 0
    for file in sorted(store.directory.glob("shard_*.safetensors")):
        with safe_open(str(file), framework="numpy") as handle:
            total += handle.get_tensor("layer3.residue").nbytes
    return total


def test_the_sample_is_seeded_and_bounded(
    full: EmbeddingStore, sampled: EmbeddingStore, corpus: list[str]
) -> None:
    chosen = choose_residue_proteins(len(corpus), SAMPLE, SEED)
    assert chosen is not None and len(chosen) == SAMPLE
    assert np.array_equal(chosen, choose_residue_proteins(len(corpus), SAMPLE, SEED))
    assert not np.array_equal(chosen, choose_residue_proteins(len(corpus), SAMPLE, SEED + 1))
    assert choose_residue_proteins(len(corpus), len(corpus), SEED) is None  # all: no sample
    assert np.array_equal(np.flatnonzero(sampled.residue_stored), chosen)
    assert np.array_equal(np.load(EmbeddingFiles(sampled.directory).residue_proteins), chosen)
    record = sampled.manifest["residue_sample"]
    stored = int(sampled.lengths[chosen].sum())
    assert record["proteins"] == SAMPLE and record["seed"] == SEED
    assert record["n_residues"] == sampled.n_stored_residues == stored
    assert full.manifest["residue_sample"] is None and full.residue_stored.all()
    assert not full.residue_sampled and sampled.residue_sampled
    # Disk: the residue tensors hold the sampled residues alone (d × 2 bytes each).
    assert _residue_bytes(sampled) == stored * 192 * 2
    assert _residue_bytes(full) == int(full.lengths.sum()) * 192 * 2
    # Pooled vectors of every protein, as the full store's (the same forward passes).
    for layer in (3, 4):
        assert np.array_equal(sampled.pooled(layer), full.pooled(layer))
    for p in chosen.tolist():
        assert np.array_equal(sampled.residues(3, p), full.residues(3, p))
    outside = int(np.flatnonzero(~sampled.residue_stored)[0])
    with pytest.raises(ResiduesNotStoredError, match="outside the residue sample"):
        sampled.residues(3, outside)


def test_training_draws_from_the_stored_sample(
    full: EmbeddingStore, sampled: EmbeddingStore
) -> None:
    n = sampled.n_stored_residues
    drawn = sampled.sample_residues(3, n, seed=0)
    stored = np.concatenate(
        [full.residues(3, p) for p in np.flatnonzero(sampled.residue_stored).tolist()]
    )
    as_rows = {row.tobytes() for row in stored}
    assert len(drawn) == n and all(row.tobytes() in as_rows for row in drawn)
    with pytest.raises(ValueError, match="only"):
        sampled.sample_residues(3, n + 1, seed=0)


def test_replayed_residues_equal_the_full_store_bit_for_bit(
    full: EmbeddingStore, sampled: EmbeddingStore, replay: ReplayedResidues
) -> None:
    """Every protein, the windowed one included, alone or with others, and the analysis pass's
    batches: what the replay computes is what the full store holds."""
    proteins = list(range(full.n_proteins))
    reference = np.concatenate([full.residues(3, p) for p in proteins])
    assert np.array_equal(replay(3, proteins[::-1]),
                          np.concatenate([full.residues(3, p) for p in proteins[::-1]]))  # fmt: skip
    long = int(np.argmax(full.lengths))
    assert np.array_equal(replay(3, [long]), full.residues(3, long))
    assert np.array_equal(sampled.residues_of(3, proteins, replay), reference)
    ref_batches = list(full.iter_residue_batches(3, 900))
    got_batches = list(sampled.iter_residue_batches(3, 900, replay))
    assert len(ref_batches) == len(got_batches)
    for ref, got in zip(ref_batches, got_batches, strict=True):
        for a, b in zip(ref, got, strict=True):
            assert np.array_equal(a, b)
    with pytest.raises(ResiduesNotStoredError, match="need a residue source"):
        list(sampled.iter_residue_batches(3, 900))


def _sae() -> TopKSAE:
    torch.manual_seed(0)
    module = TopKSAE(192, 384, k=8)
    with torch.no_grad():
        module.b_enc.uniform_(-0.5, 0.5)
    return module.eval()


def _arrays(out: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name in ("features", "examples", "protein_top", "neighbors", "aa_profile"):
        path = out / f"{name}.npz"
        if path.exists():
            with np.load(path) as data:
                arrays.update({f"{name}:{key}": data[key] for key in data.files})
    acts = sp.load_npz(out / "protein_activations.npz").tocsr()
    arrays.update(
        {"acts:indptr": acts.indptr, "acts:indices": acts.indices, "acts:data": acts.data}
    )
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("seconds")
    arrays["summary"] = np.array(json.dumps(summary, sort_keys=True))
    return arrays


@pytest.mark.parametrize("level", ["residue", "protein"])
def test_analysis_over_a_sampled_store_equals_the_full_store(
    full: EmbeddingStore,
    sampled: EmbeddingStore,
    replay: ReplayedResidues,
    corpus: list[str],
    tmp_path: Path,
    level: str,
) -> None:
    """Per-feature stats, examples and their tracks, per-protein activations and top features,
    the amino-acid profile and the FVE summary: equal bit for bit (same device and threads)."""
    pairs = [(p, list(range(int(full.lengths[p]) // 2))) for p in range(0, full.n_proteins, 3)]
    chains = chains_by_protein(pairs, full.lengths)
    spec = Spec("d", level, 3)
    ref = run_analyze(tmp_path / "full", _sae(), spec, full, chains, CFG, sequences=corpus)
    got = run_analyze(tmp_path / "sampled", _sae(), spec, sampled, chains, CFG, replay,
                      sequences=corpus)  # fmt: skip
    expected, actual = _arrays(ref), _arrays(got)
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert np.array_equal(value, actual[key], equal_nan=value.dtype.kind == "f"), key


def test_tracks_without_a_source_name_the_missing_residues(sampled: EmbeddingStore) -> None:
    outside = int(np.flatnonzero(~sampled.residue_stored)[0])
    with pytest.raises(ResiduesNotStoredError, match="outside the residue sample"):
        residue_tracks(_sae(), Spec("d", "residue", 3), sampled, {outside: [0]})


def test_changing_the_sample_embeds_again(
    shared_dir: Path,
    corpus: list[str],
    sampled: EmbeddingStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(sampled.directory, workdir / "embeddings")
    manifest_path = workdir / "embeddings" / "manifest.json"
    config = _config(shared_dir, residue_proteins=SAMPLE)
    before = manifest_path.stat().st_mtime_ns
    run_embed(workdir, corpus, config, residue_seed=SEED)  # the same sample: left alone
    assert manifest_path.stat().st_mtime_ns == before
    # An interrupted run keeps the sampled shards already on disk (checked, not recomputed).
    manifest = json.loads(manifest_path.read_text())
    manifest["done"] = manifest["shards"][0]["done"] = False
    manifest_path.write_text(json.dumps(manifest))
    kept = (workdir / "embeddings" / manifest["shards"][0]["file"]).stat().st_mtime_ns
    run_embed(workdir, corpus, config, residue_seed=SEED)
    assert (workdir / "embeddings" / manifest["shards"][0]["file"]).stat().st_mtime_ns == kept
    # Another seed, then every protein: embedded again, the manifest and files follow.
    redone = run_embed(workdir, corpus, config, residue_seed=SEED + 1)
    assert "the stored residue sample changed" in capsys.readouterr().out
    assert redone["residue_sample"]["seed"] == SEED + 1
    store = EmbeddingStore(workdir / "embeddings")
    chosen = choose_residue_proteins(len(corpus), SAMPLE, SEED + 1)
    assert np.array_equal(np.flatnonzero(store.residue_stored), chosen)
    everything = run_embed(workdir, corpus, _config(shared_dir), residue_seed=SEED + 1)
    assert everything["residue_sample"] is None
    store = EmbeddingStore(workdir / "embeddings")
    assert (
        store.residue_stored.all() and not EmbeddingFiles(store.directory).residue_proteins.exists()
    )
    assert store.n_stored_residues == int(store.lengths.sum())


def test_the_pipeline_samples_with_the_run_seed_and_trains_on_the_sample(
    shared_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The tiny run's config on 40 proteins with ``residue_proteins = 6``: embed draws the
    sample with ``[run] seed``; the residue dictionary's data is the stored residues (fewer
    than its steps want: said in the log); its stamps follow the sample (a protein-level
    one's do not); analyze gets the replayed residues for the proteins outside it."""
    from app.settings import Settings
    from tests.tiny_run import CONFIG
    from trainer.config import TrainerConfig, load_config
    from trainer.pipeline import Pipeline

    settings = Settings(data_dir=tmp_path / "data", shared_dir=shared_dir)
    raw = load_config(CONFIG, settings).model_dump(mode="json")
    raw["run"]["seed"] = 7
    raw["ingest"]["max_proteins"] = 40
    raw["controls"]["random_init"] = False
    raw["embed"]["residue_proteins"] = 6
    pipeline = Pipeline(TrainerConfig.model_validate(raw), settings)
    pipeline.ingest()
    pipeline.embed()
    store = pipeline.store("embeddings")
    chosen = choose_residue_proteins(store.n_proteins, 6, 7)
    assert np.array_equal(np.flatnonzero(store.residue_stored), chosen)
    plan = next(p for p in pipeline.plans() if p.spec.name == "L3-residue-topk")
    with caplog.at_level("WARNING", logger="trainer.pipeline"):
        x, y, _, _ = pipeline._data(plan)(plan.spec)
    assert x.shape == (store.n_stored_residues, 192) and y is None
    assert "the stored residue sample (6 proteins) holds" in caplog.text
    # Train and analyze stamps: the sample beside what they held before (unchanged without).
    embeddings = pipeline._stamp_inputs(plan)["embeddings"]
    assert embeddings.pop("residue_sample") == store.manifest["residue_sample"]
    assert embeddings == {k: store.manifest[k] for k in ("model", "corpus_sha256", "dtype")}
    protein_level = next(p for p in pipeline.plans() if p.spec.name == "L3-protein-topk")
    assert pipeline._stamp_inputs(protein_level)["embeddings"] == embeddings
    replayed = pipeline._replayed(plan, store)
    outside = int(np.flatnonzero(~store.residue_stored)[0])
    assert replayed(3, [outside]).shape == (int(store.lengths[outside]), 192)


def test_a_sample_of_no_proteins_is_a_config_error(shared_dir: Path, tmp_path: Path) -> None:
    from app.settings import Settings
    from tests.tiny_run import CONFIG
    from trainer.config import ConfigError, load_config

    path = tmp_path / "run.toml"
    path.write_text(f'extends = "{CONFIG}"\n\n[embed]\nresidue_proteins = 0\n')
    with pytest.raises(ConfigError, match=r"embed\.residue_proteins: .*greater than or equal to 1"):
        load_config(path, Settings(data_dir=tmp_path, shared_dir=shared_dir))
