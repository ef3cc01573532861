"""The embed stage on real proteins with the real mini model: shards, store, resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from safetensors.numpy import load_file

from app.esm import LoadedModel, embed_sequences, random_init_copy
from tests.conftest import MINI_MODEL as MODEL
from tests.realdata import human_proteins
from trainer.embed import EmbedConfig, EmbeddingMismatchError, EmbeddingStore, run_embed


@pytest.fixture(scope="module")
def corpus(shared_dir: Path) -> list[str]:
    rows = human_proteins(shared_dir, 200)
    return [r["sequence"] for r in rows if len(r["sequence"]) <= 260][:60]


@pytest.fixture(scope="module")
def config(shared_dir: Path) -> EmbedConfig:
    return EmbedConfig(
        model=str(shared_dir / MODEL), layers=[0, 2, 4], shard_max_residues=2500, device="cpu"
    )


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, corpus: list[str], config: EmbedConfig
) -> Path:
    workdir = tmp_path_factory.mktemp("run")
    run_embed(workdir, corpus, config)
    return workdir / "embeddings"


def _shards(directory: Path) -> dict[str, dict[str, np.ndarray]]:
    return {p.name: load_file(str(p)) for p in sorted(directory.glob("shard_*.safetensors"))}


def test_manifest_and_shards(finished: Path, corpus: list[str], loaded: LoadedModel) -> None:
    manifest = json.loads((finished / "manifest.json").read_text())
    assert manifest["done"] and manifest["model"]["sha256"] == loaded.sha256
    assert manifest["layers"] == [0, 2, 4] and manifest["d_model"] == 192
    assert manifest["n_proteins"] == len(corpus) and len(manifest["shards"]) >= 4
    seen: list[int] = []
    for shard in manifest["shards"]:
        data = load_file(str(finished / shard["file"]))
        assert shard["done"] and shard["n_residues"] <= 2500
        assert data["layer2.residue"].dtype == np.float16
        assert data["layer2.residue"].shape == (shard["n_residues"], 192)
        assert data["layer4.pooled"].shape == (shard["n_proteins"], 192)
        assert data["offsets"][-1] == shard["n_residues"]
        seen.extend(data["protein_index"].tolist())
    assert sorted(seen) == list(range(len(corpus)))
    lengths = [len(corpus[i]) for i in seen]
    assert lengths == sorted(lengths, reverse=True)  # length-sorted across the corpus


def test_store_matches_direct_embedding(
    finished: Path, corpus: list[str], loaded: LoadedModel
) -> None:
    store = EmbeddingStore(finished)
    assert (store.n_proteins, store.d_model, store.layers) == (len(corpus), 192, [0, 2, 4])
    assert store.lengths.tolist() == [len(s) for s in corpus]
    direct = embed_sequences(loaded, corpus, [0, 2, 4])
    for layer in [0, 2, 4]:
        pooled = store.pooled(layer)
        assert pooled.dtype == np.float32 and pooled.shape == (len(corpus), 192)
        for i in (0, 17, len(corpus) - 1):
            residues = store.residues(layer, i)
            np.testing.assert_allclose(residues, direct[i][layer], rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(pooled[i], residues.mean(axis=0), rtol=2e-3, atol=1e-3)


def test_residue_batches_and_samples(finished: Path, corpus: list[str]) -> None:
    store = EmbeddingStore(finished)
    covered: list[int] = []
    for proteins, offsets, values in store.iter_residue_batches(2, max_residues=700):
        assert values.shape == (offsets[-1], 192) and values.dtype == np.float32
        assert values.shape[0] <= 700 or len(proteins) == 1
        for k, i in enumerate(proteins):
            np.testing.assert_array_equal(values[offsets[k] : offsets[k + 1]], store.residues(2, i))
        covered.extend(proteins.tolist())
    assert sorted(covered) == list(range(len(corpus)))
    sample = store.sample_residues(4, 300, seed=7)
    assert sample.shape == (300, 192)
    np.testing.assert_array_equal(sample, store.sample_residues(4, 300, seed=7))
    half = store.sample_residues(4, 300, seed=7, dtype=np.float16)  # the stored precision
    assert half.dtype == np.float16 and store.dtype == np.float16
    np.testing.assert_array_equal(half.astype(np.float32), sample)
    everything = np.concatenate([store.residues(4, i) for i in range(len(corpus))])
    rows = {row.tobytes() for row in everything}
    assert all(row.tobytes() in rows for row in sample)
    assert len({row.tobytes() for row in sample}) == 300
    with pytest.raises(ValueError, match="only"):
        store.sample_residues(4, int(store.lengths.sum()) + 1, seed=0)
    with pytest.raises(KeyError, match="layer 1 was not embedded"):
        store.pooled(1)


def test_resume_after_interruption_is_identical(
    finished: Path, corpus: list[str], config: EmbedConfig, tmp_path: Path
) -> None:
    run_embed(tmp_path, corpus, config)
    out = tmp_path / "embeddings"
    manifest = json.loads((out / "manifest.json").read_text())
    last = manifest["shards"][-1]["file"]
    (out / last).unlink()  # the shard being written when the run died
    manifest["done"] = False
    manifest["shards"][1]["done"] = False  # finished on disk but not yet recorded
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "shard_00002.safetensors.tmp").write_bytes(b"half a shard")
    with pytest.raises(RuntimeError, match="not finished"):
        EmbeddingStore(out)
    first = out / manifest["shards"][0]["file"]
    stamp = first.stat().st_mtime_ns
    run_embed(tmp_path, corpus, config)
    assert first.stat().st_mtime_ns == stamp  # finished shards are kept, not recomputed
    assert not list(out.glob("*.tmp"))
    expected, got = _shards(finished), _shards(out)
    assert expected.keys() == got.keys()
    for name, tensors in expected.items():
        assert tensors.keys() == got[name].keys()
        for key, value in tensors.items():
            np.testing.assert_array_equal(value, got[name][key], err_msg=f"{name}:{key}")
    assert json.loads((out / "manifest.json").read_text())["done"]


def test_mismatched_manifest_is_refused(
    finished: Path, corpus: list[str], config: EmbedConfig, loaded: LoadedModel
) -> None:
    workdir = finished.parent
    with pytest.raises(EmbeddingMismatchError, match="layers"):
        run_embed(workdir, corpus, config.model_copy(update={"layers": [1, 2]}))
    with pytest.raises(EmbeddingMismatchError, match="sha256"):
        run_embed(workdir, corpus, config, model_override=random_init_copy(loaded, 0))
    with pytest.raises(EmbeddingMismatchError, match="corpus_sha256"):
        run_embed(workdir, corpus[:-1], config)
    assert json.loads((finished / "manifest.json").read_text())["done"]  # left as it was


def test_config_rejects_unknown_keys(shared_dir: Path) -> None:
    with pytest.raises(ValidationError):
        EmbedConfig.model_validate({"model": str(shared_dir / MODEL), "layer": 3})


def test_finished_run_is_left_alone(finished: Path, corpus: list[str], config: EmbedConfig) -> None:
    stamp = (finished / "manifest.json").stat().st_mtime_ns
    manifest = run_embed(finished.parent, corpus, config)
    assert manifest["done"] and (finished / "manifest.json").stat().st_mtime_ns == stamp
