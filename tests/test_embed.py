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
from trainer.embed import EmbedConfig, EmbeddingMismatchError, run_embed
from trainer.embed_shards import pooled_sums
from trainer.embedding_store import EmbeddingStore, ResiduesNotStoredError
from trainer.residue_replay import model_residue_source


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


@pytest.fixture(scope="module")
def pooled_only(
    tmp_path_factory: pytest.TempPathFactory, corpus: list[str], config: EmbedConfig
) -> Path:
    """The same corpus with per-residue vectors of layer 2 only (0 and 4 pooled-only)."""
    workdir = tmp_path_factory.mktemp("pooled")
    run_embed(workdir, corpus, config.model_copy(update={"residue_layers": [2]}))
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
    unrecorded = out / manifest["shards"][1]["file"]
    stamps = [first.stat().st_mtime_ns, unrecorded.stat().st_mtime_ns]
    run_embed(tmp_path, corpus, config)
    # Finished shards are kept, not recomputed, recorded or not (files land by rename).
    assert [first.stat().st_mtime_ns, unrecorded.stat().st_mtime_ns] == stamps
    assert not list(out.glob("*.tmp"))
    expected, got = _shards(finished), _shards(out)
    assert expected.keys() == got.keys()
    for name, tensors in expected.items():
        assert tensors.keys() == got[name].keys()
        for key, value in tensors.items():
            np.testing.assert_array_equal(value, got[name][key], err_msg=f"{name}:{key}")
    assert json.loads((out / "manifest.json").read_text())["done"]


@pytest.mark.parametrize("chunk", [1 << 18, 300, 1])
def test_pooled_sums_match_numpy_reduceat(finished: Path, chunk: int) -> None:
    """Per-protein sums of a real shard's float16 residues, against numpy's reduceat; small
    chunks put proteins longer than a chunk and chunk edges inside the shard."""
    shard = _shards(finished)["shard_00000.safetensors"]
    offsets, residue = shard["offsets"], shard["layer2.residue"]
    assert residue.dtype == np.float16 and len(offsets) > 3
    expected = np.add.reduceat(residue, offsets[:-1], axis=0, dtype=np.float32)
    got = pooled_sums(residue, offsets, chunk_residues=chunk)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_unrecorded_shard_file_is_checked_before_it_is_kept(
    corpus: list[str], config: EmbedConfig, tmp_path: Path
) -> None:
    """An unrecorded shard file is kept only if it is this plan's shard; one from another
    plan's proteins, one with fewer layers, or a corrupt one is recomputed to the right file."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    run_embed(tmp_path, corpus, config)
    out = tmp_path / "embeddings"
    expected = _shards(out)
    manifest = json.loads((out / "manifest.json").read_text())
    names = [s["file"] for s in manifest["shards"]]
    wrong_proteins = dict(expected[names[1]])
    wrong_proteins["protein_index"] = wrong_proteins["protein_index"][::-1].copy()
    fewer_layers = {k: v for k, v in expected[names[2]].items() if not k.startswith("layer4")}
    with safe_open(str(out / names[1]), framework="numpy") as handle:
        metadata = handle.metadata()
    assert metadata and metadata["model_sha256"]  # so only the proteins or the layers differ
    save_file(wrong_proteins, str(out / names[1]), metadata=metadata)
    save_file(fewer_layers, str(out / names[2]), metadata=metadata)
    (out / names[0]).write_bytes(b"half a shard")
    for shard in manifest["shards"][:3]:
        shard["done"] = False
    manifest["done"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    run_embed(tmp_path, corpus, config)
    got = _shards(out)
    for name in names[:3]:
        assert got[name].keys() == expected[name].keys()
        for key, value in expected[name].items():
            np.testing.assert_array_equal(value, got[name][key], err_msg=f"{name}:{key}")


def test_failed_shard_write_is_not_recorded_and_resumes(
    finished: Path,
    corpus: list[str],
    config: EmbedConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shards are written by a background thread while the next one is computed: a write that
    fails surfaces in the stage, leaves its shard unrecorded, and a rerun completes it."""
    import trainer.embed_shards as embed_module

    real_write = embed_module._write_shard
    calls: list[Path] = []

    def failing_second_write(*args: object, **kwargs: object) -> None:
        path = args[-1]
        assert isinstance(path, Path)
        calls.append(path)
        if len(calls) == 2:
            raise OSError(f"{path}: disk full")
        real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(embed_module, "_write_shard", failing_second_write)
    with pytest.raises(OSError, match="disk full"):
        run_embed(tmp_path, corpus, config)
    out = tmp_path / "embeddings"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["done"] for s in manifest["shards"]][:2] == [True, False]
    assert not manifest["done"]
    monkeypatch.setattr(embed_module, "_write_shard", real_write)
    run_embed(tmp_path, corpus, config)
    expected, got = _shards(finished), _shards(out)
    assert expected.keys() == got.keys()
    for name, tensors in expected.items():
        for key, value in tensors.items():
            np.testing.assert_array_equal(value, got[name][key], err_msg=f"{name}:{key}")


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


def _bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("shard_*.safetensors"))


def test_residue_layers_keep_pooled_vectors_of_every_layer(
    finished: Path, pooled_only: Path
) -> None:
    full, part = EmbeddingStore(finished), EmbeddingStore(pooled_only)
    assert json.loads((pooled_only / "manifest.json").read_text())["residue_layers"] == [2]
    assert (part.layers, part.residue_layers, full.residue_layers) == ([0, 2, 4], [2], [0, 2, 4])
    assert [part.has_residues(layer) for layer in (0, 2, 4)] == [False, True, False]
    for layer in (0, 2, 4):  # one forward pass, the same float16 residues pooled
        np.testing.assert_array_equal(part.pooled(layer), full.pooled(layer))
    for i in (0, 17, len(part.lengths) - 1):
        np.testing.assert_array_equal(part.residues(2, i), full.residues(2, i))
    for name, tensors in _shards(pooled_only).items():
        assert "layer4.residue" not in tensors and "layer0.residue" not in tensors, name
        assert {"layer0.pooled", "layer2.residue", "layer4.pooled"} <= tensors.keys()
    # Two of three layers' residue rows are gone: the shards shrink by about two thirds.
    assert _bytes(pooled_only) < 0.4 * _bytes(finished)
    message = r"layer 4 was embedded pooled-only .*residue layers: \[2\]"
    with pytest.raises(ResiduesNotStoredError, match=message):
        part.residues(4, 0)
    with pytest.raises(ResiduesNotStoredError, match="layer 0 was embedded pooled-only"):
        next(part.iter_residue_batches(0, 1000))
    with pytest.raises(ResiduesNotStoredError, match="layer 4"):
        part.sample_residues(4, 10, seed=0)
    with pytest.raises(KeyError, match="layer 3 was not embedded"):
        part.residues(3, 0)


def test_model_residue_source_recomputes_pooled_only_layers(
    finished: Path, pooled_only: Path, corpus: list[str], loaded: LoadedModel
) -> None:
    full, part = EmbeddingStore(finished), EmbeddingStore(pooled_only)
    source = model_residue_source(part, loaded, corpus)
    proteins = [3, 0, 41]  # any order: rows come back in the order asked
    got = source(4, proteins)
    expected = np.concatenate([full.residues(4, p) for p in proteins])
    assert got.dtype == np.float32 and got.shape == expected.shape
    # Other batches, so float noise may round to a neighbouring float16 value, no further.
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-3)
    assert np.mean(got == expected) > 0.9
    np.testing.assert_array_equal(got, got.astype(np.float16).astype(np.float32))
    with pytest.raises(EmbeddingMismatchError, match="sha256"):
        model_residue_source(part, random_init_copy(loaded, 0), corpus)
    with pytest.raises(EmbeddingMismatchError, match="another corpus"):
        model_residue_source(part, loaded, corpus[:-1])


def test_model_residue_source_cache_serves_every_pooled_only_layer(
    pooled_only: Path, corpus: list[str], loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a cache, the first forward keeps all pooled-only layers: later layers and repeated
    proteins need no forward, and values equal the uncached source's on the same batch."""
    import trainer.residue_replay as embed_module

    part = EmbeddingStore(pooled_only)
    pooled_layers = [layer for layer in part.layers if not part.has_residues(layer)]
    assert len(pooled_layers) >= 2
    calls: list[list[int]] = []
    real = embed_module.embed_concatenated

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(list(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_module, "embed_concatenated", counting)
    plain = model_residue_source(part, loaded, corpus)
    cached = model_residue_source(part, loaded, corpus, cache_bytes=2**30)
    proteins = [5, 2, 17]
    first, second = pooled_layers[0], pooled_layers[-1]
    np.testing.assert_array_equal(cached(first, proteins), plain(first, proteins))
    assert calls[0] == sorted(pooled_layers) and calls[1] == [first]
    n_calls = len(calls)
    ref = plain(second, proteins)  # the batch the cache was filled from: same values
    starts = np.cumsum([0, *[len(corpus[p]) for p in proteins]])
    rows = {p: ref[starts[i] : starts[i + 1]] for i, p in enumerate(proteins)}
    np.testing.assert_array_equal(cached(second, [17, 5]), np.concatenate([rows[17], rows[5]]))
    assert len(calls) == n_calls + 1  # only the plain source ran a forward
    tiny = model_residue_source(part, loaded, corpus, cache_bytes=1)  # too small to keep any
    tiny(first, [5])
    tiny(first, [5])
    assert len(calls) == n_calls + 3


def test_residue_layers_resume_and_mismatch(
    finished: Path, pooled_only: Path, corpus: list[str], config: EmbedConfig, tmp_path: Path
) -> None:
    subset = config.model_copy(update={"residue_layers": [2]})
    run_embed(tmp_path, corpus, subset)
    out = tmp_path / "embeddings"
    manifest = json.loads((out / "manifest.json").read_text())
    (out / manifest["shards"][-1]["file"]).unlink()
    manifest["done"] = manifest["shards"][-1]["done"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmbeddingMismatchError, match="residue_layers: existing \\[2\\]"):
        run_embed(tmp_path, corpus, config.model_copy(update={"residue_layers": [2, 4]}))
    with pytest.raises(EmbeddingMismatchError, match="residue_layers"):
        run_embed(tmp_path, corpus, config)  # None: every layer per residue
    run_embed(tmp_path, corpus, subset)  # resumes the missing shard, pooled-only as before
    expected, got = _shards(pooled_only), _shards(out)
    assert expected.keys() == got.keys()
    for name, tensors in expected.items():
        assert tensors.keys() == got[name].keys()
        for key, value in tensors.items():
            np.testing.assert_array_equal(value, got[name][key], err_msg=f"{name}:{key}")
    # A finished directory with residues of more layers serves a smaller request untouched.
    stamp = (finished / "manifest.json").stat().st_mtime_ns
    assert run_embed(finished.parent, corpus, subset)["residue_layers"] == [0, 2, 4]
    assert (finished / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"residue_layers \[3\] are not among"):
        run_embed(tmp_path / "other", corpus, config.model_copy(update={"residue_layers": [2, 3]}))
