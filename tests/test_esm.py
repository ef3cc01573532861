"""app.esm on the real mini ESM2 and real human Swiss-Prot proteins."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import pathlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from app.esm import (
    LoadedModel,
    ModelLoadError,
    attention_fusable,
    embed_on_device,
    embed_sequences,
    forward_representations,
    load_esm,
    plan_windows,
    random_init_copy,
    tokenize,
)
from tests.conftest import MINI_MODEL as MODEL
from tests.realdata import human_proteins

LONG_ACCESSION = "A1KZ92"  # PXDNL, 1,463 aa: two windows


@pytest.fixture(scope="module")
def sequences(shared_dir: Path) -> list[str]:
    rows = human_proteins(shared_dir, 150)
    return [r["sequence"] for r in rows if len(r["sequence"]) <= 350][:40]


def _fair_esm_single(loaded: LoadedModel, seq: str, layers: list[int]) -> dict[int, np.ndarray]:
    """fair-esm's own forward on one unpadded sequence, BOS/EOS dropped."""
    with torch.inference_mode():
        tokens = loaded.batch_converter([("x", seq)])[2]
        reps = loaded.model(tokens, repr_layers=layers)["representations"]
    return {layer: reps[layer][0, 1 : len(seq) + 1].numpy() for layer in layers}


def test_load_records_model(loaded: LoadedModel, shared_dir: Path) -> None:
    expected = hashlib.sha256((shared_dir / MODEL).read_bytes()).hexdigest()
    assert loaded.sha256 == expected
    assert (loaded.name, loaded.num_layers, loaded.embed_dim) == ("esm2_t4_2M_sprot14mini", 4, 192)
    assert not loaded.model.training and loaded.device.type == "cpu"
    assert load_esm(shared_dir / MODEL, device="cpu") is loaded  # cached per process
    assert load_esm(str(shared_dir / MODEL), device="cpu") is loaded


def test_per_residue_equals_fair_esm_forward(loaded: LoadedModel, sequences: list[str]) -> None:
    layers = [0, 1, 2, 3, 4]
    ours = embed_sequences(loaded, sequences, layers, max_tokens_per_batch=2048)
    assert len(ours) == len(sequences)
    for seq, got in zip(sequences, ours, strict=True):
        ref = _fair_esm_single(loaded, seq, layers)
        for layer in layers:
            assert got[layer].shape == (len(seq), 192) and got[layer].dtype == np.float32
            np.testing.assert_allclose(got[layer], ref[layer], atol=2e-4, rtol=1e-4)


def test_truncated_forward_is_fair_esm_bit_for_bit(
    loaded: LoadedModel, sequences: list[str]
) -> None:
    """Every layer, alone and with others, on padded batches (different lengths) and one row."""
    batch = loaded.batch_converter([(str(i), s) for i, s in enumerate(sequences[:6])])[2]
    assert bool(batch.eq(loaded.alphabet.padding_idx).any())  # padding is exercised
    single = loaded.batch_converter([("x", sequences[6])])[2]
    n = loaded.num_layers
    with torch.inference_mode():
        for tokens in (batch, single):
            for layer in range(n + 1):
                ref = loaded.model(tokens, repr_layers=[layer])["representations"][layer]
                got = forward_representations(loaded.model, tokens, [layer])
                assert set(got) == {layer} and torch.equal(got[layer], ref), layer
            ref_all = loaded.model(tokens, repr_layers=list(range(n + 1)))["representations"]
            got_all = forward_representations(loaded.model, tokens, [0, n - 1, n])
            for layer in (0, n - 1, n):
                assert torch.equal(got_all[layer], ref_all[layer]), layer
        # A masked token exercises fair-esm's token-dropout rescaling.
        masked = batch.clone()
        masked[0, 3] = loaded.alphabet.mask_idx
        ref = loaded.model(masked, repr_layers=[2])["representations"][2]
        assert torch.equal(forward_representations(loaded.model, masked, [2])[2], ref)


def test_fused_attention_matches_fair_esm(loaded: LoadedModel, sequences: list[str]) -> None:
    """The fused kernel gives fair-esm's numbers up to float rounding: padded batches (keys past
    a row's end are masked), one unpadded row, a masked token; fair-esm's model is left as is."""
    batch = loaded.batch_converter([(str(i), s) for i, s in enumerate(sequences[:6])])[2]
    single = loaded.batch_converter([("x", sequences[6])])[2]
    masked = batch.clone()
    masked[1, 5] = loaded.alphabet.mask_idx
    layers = list(range(loaded.num_layers + 1))
    assert all(attention_fusable(layer) for layer in loaded.model.layers)  # the kernel runs
    real = batch.ne(loaded.alphabet.padding_idx)
    with torch.inference_mode():
        for tokens in (batch, single, masked):
            ref = loaded.model(tokens, repr_layers=layers)["representations"]
            got = forward_representations(loaded.model, tokens, layers, attention="fused")
            keep = (
                real if tokens.shape == batch.shape else torch.ones_like(tokens, dtype=torch.bool)
            )
            for layer in layers:
                # Padding rows are never read (BOS/EOS and pads are dropped downstream).
                torch.testing.assert_close(got[layer][keep], ref[layer][keep], rtol=1e-4, atol=1e-4)
        # Contact prediction still needs fair-esm's per-head weights: its modules are untouched.
        out = loaded.model(single, repr_layers=[1], return_contacts=True)
        assert out["contacts"].shape[-1] == single.shape[1] - 2
    with pytest.raises(ValueError, match="attention must be one of"):
        forward_representations(loaded.model, single, [1], attention="flash")  # type: ignore[arg-type]


def test_loaded_model_attention_drives_embedding(loaded: LoadedModel, sequences: list[str]) -> None:
    """``LoadedModel.attention`` picks the kernel for every embedding path; both agree."""
    exact = dataclasses.replace(loaded, attention="fair-esm")
    fused = embed_sequences(loaded, sequences[:10], [2, 4], max_tokens_per_batch=1024)
    plain = embed_sequences(exact, sequences[:10], [2, 4], max_tokens_per_batch=1024)
    for a, b in zip(fused, plain, strict=True):
        for layer in (2, 4):
            np.testing.assert_allclose(a[layer], b[layer], rtol=1e-4, atol=1e-4)
    # fair-esm mode is the library bit for bit (the per-layer checks above are on tokens).
    seq = sequences[3]
    ref = _fair_esm_single(loaded, seq, [4])[4]
    np.testing.assert_array_equal(embed_sequences(exact, [seq], [4])[0][4], ref)


def test_tokenize_equals_fair_esm_converter(loaded: LoadedModel, sequences: list[str]) -> None:
    odd = ["MKXBUZO", "A", "M<mask>KT"]  # rare letters; a multi-letter token takes the fallback
    for batch in (sequences[:8], sequences[8:9], odd):
        ref = loaded.batch_converter([(str(i), s) for i, s in enumerate(batch)])[2]
        got = tokenize(loaded, batch)
        assert got.dtype == ref.dtype and torch.equal(got, ref)


def test_embed_on_device_equals_embed_sequences(loaded: LoadedModel, shared_dir: Path) -> None:
    rows = human_proteins(shared_dir, 200)
    long = next(r["sequence"] for r in rows if r["accession"] == LONG_ACCESSION)
    batch = [rows[0]["sequence"], long, rows[1]["sequence"][:40]]  # windows and plain, mixed
    ref = embed_sequences(loaded, batch, [3], max_tokens_per_batch=2048)
    got = embed_on_device(loaded, batch, 3, max_tokens_per_batch=2048)
    for r, g in zip(ref, got, strict=True):
        assert g.device == loaded.device and g.dtype == torch.float32
        assert np.array_equal(g.numpy(), r[3])


def test_windowing_long_protein(loaded: LoadedModel, shared_dir: Path) -> None:
    rows = human_proteins(shared_dir, 200)
    seq = next(r["sequence"] for r in rows if r["accession"] == LONG_ACCESSION)
    assert len(seq) > loaded.max_tokens
    (got,) = embed_sequences(loaded, [seq], [0, 4])
    assert got[4].shape == (len(seq), 192)
    full = _fair_esm_single(loaded, seq, [0, 4])  # one pass over all 1,463 aa (rotary allows it)
    np.testing.assert_allclose(got[0], full[0], atol=1e-6)  # embeddings have no context
    (_s0, _e0, _k0, cut), (s1, e1, _k1, _) = plan_windows(len(seq), 1022, 511)
    middle = slice(cut - 250, cut)  # ≥ 250 aa from every window edge

    def rel_error(values: np.ndarray, part: slice) -> float:
        return float(np.linalg.norm(values[part] - full[4][part]) / np.linalg.norm(full[4][part]))

    assert rel_error(got[4], middle) < 0.06  # measured 0.042: the full pass sees 441 more aa
    # Near window 0's right edge the residues come from window 1, which is closer to the full pass.
    crop = np.zeros_like(got[4])
    crop[:1022] = _fair_esm_single(loaded, seq[:1022], [4])[4]
    edge = slice(980, 1022)
    assert s1 < edge.start and e1 == len(seq)
    assert rel_error(got[4], edge) < rel_error(crop, edge)


def test_plan_windows_cover_each_residue_once(shared_dir: Path) -> None:
    lengths = [len(r["sequence"]) for r in human_proteins(shared_dir, 400)]
    for length in [*lengths, 1022, 1023, 2044, 34350]:
        windows = plan_windows(length, 1022, 511)
        kept = np.zeros(length, dtype=int)
        for start, end, keep_from, keep_to in windows:
            assert 0 <= start <= keep_from <= keep_to <= end <= length
            assert end - start == min(length, 1022)
            kept[keep_from:keep_to] += 1
        assert (kept == 1).all()


def test_bad_input_is_named(loaded: LoadedModel) -> None:
    with pytest.raises(ValueError, match="sequence 1 has letters outside"):
        embed_sequences(loaded, ["MKT", "MKJT"], [1])
    with pytest.raises(ValueError, match=r"outside 0\.\.4"):
        embed_sequences(loaded, ["MKT"], [5])


class Payload:
    """A pickled object that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.touch, (self.marker,))


def test_loader_allows_only_namespace(shared_dir: Path, tmp_path: Path) -> None:
    torch.serialization.add_safe_globals([argparse.Namespace])
    data = torch.load(shared_dir / MODEL, map_location="cpu")
    marker = tmp_path / "executed"
    data["extra"] = Payload(marker)
    evil = tmp_path / "esm2_t4_tampered.pt"
    torch.save(data, evil)
    regression = shared_dir / "models/esm2_t4_2M_sprot14mini-contact-regression.pt"
    shutil.copy(regression, tmp_path / "esm2_t4_tampered-contact-regression.pt")
    with pytest.raises(ModelLoadError, match="refused to unpickle"):
        load_esm(evil, device="cpu")
    assert not marker.exists()
    allowed = torch.serialization.get_safe_globals()
    assert argparse.Namespace in allowed and Payload not in allowed


def test_missing_files_are_clear_errors(shared_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_esm(tmp_path / "esm2_nothing.pt")
    lonely = tmp_path / "esm2_t4_copy.pt"
    shutil.copy(shared_dir / MODEL, lonely)
    with pytest.raises(ModelLoadError, match="contact-regression"):
        load_esm(lonely)


def test_hub_name_not_in_the_cache_says_what_to_do(tmp_path: Path) -> None:
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(ModelLoadError, match="never downloaded") as info:
            load_esm("esm2_t6_8M_UR50D", device="cpu")
        assert str(tmp_path / "checkpoints" / "esm2_t6_8M_UR50D.pt") in str(info.value)
    finally:
        torch.hub.set_dir(previous)


def test_random_init_copy(loaded: LoadedModel, sequences: list[str]) -> None:
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    a, b, c = (random_init_copy(loaded, s) for s in (3, 3, 4))
    assert a.sha256 == "random-init:3" and a.name != loaded.name
    shapes = {k: v.shape for k, v in before.items()}
    assert {k: v.shape for k, v in a.model.state_dict().items()} == shapes
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key])  # same seed, same weights
    differs = [k for k, v in a.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("layers.0.self_attn" in k for k in differs)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, before[key])  # the trained model is untouched
    real = embed_sequences(loaded, sequences[:3], [4])
    null = embed_sequences(a, sequences[:3], [4])
    assert null[0][4].shape == real[0][4].shape
    assert not np.allclose(null[0][4], real[0][4], atol=1e-2)
