"""The dictionaries' free functions on hand-made tensors, and their API on real ESM2 activations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from app.sae import (
    BatchTopKSAE,
    NeuronBasis,
    Provenance,
    ReluL1SAE,
    TopKSAE,
    Transcoder,
    export_saelens,
    load_dictionary,
    residue_reconstructor,
    save_dictionary,
)
from app.sae.functional import (
    aux_k_loss,
    batch_topk_relu,
    l1_penalty,
    layer_norm,
    normalise_rows_,
    remove_parallel_grad_,
    topk_relu,
)
from tests.real_embeddings import RealActivations, cached_real_activations


@pytest.fixture(scope="module")
def acts(request: pytest.FixtureRequest, shared_dir: Path) -> RealActivations:
    return cached_real_activations(request.config, shared_dir)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero biases, so tests exercise every term of the maths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("b_"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


# ---- free functions on hand-made tensors ---------------------------------------------------


def test_topk_keeps_exactly_k_largest_and_relus_them() -> None:
    pre = torch.tensor([[5.0, -1.0, 3.0, 0.5, 4.0], [-3.0, -2.0, -1.0, 2.0, -5.0]])
    z = topk_relu(pre, 3)
    assert torch.equal(z[0], torch.tensor([5.0, 0.0, 3.0, 0.0, 4.0]))
    # the second row keeps 2, -1, -2 and ReLU zeroes the negative ones
    assert torch.equal(z[1], torch.tensor([0.0, 0.0, 0.0, 2.0, 0.0]))
    big = torch.rand(16, 50) + 0.1
    assert ((topk_relu(big, 7) > 0).sum(dim=1) == 7).all()


def test_batch_topk_keeps_k_times_batch_across_samples() -> None:
    pre = torch.tensor([[9.0, 8.0, 7.0], [0.1, 0.2, 6.0]])
    z = batch_topk_relu(pre, 2)  # keep 4 values over the batch: 9, 8, 7, 6
    assert torch.equal(z, torch.tensor([[9.0, 8.0, 7.0], [0.0, 0.0, 6.0]]))


def test_layer_norm_is_biased_with_eps_inside_sqrt() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 10.0]])
    x_n, stats = layer_norm(x)
    assert torch.allclose(x_n, torch.nn.functional.layer_norm(x, (4,), eps=1e-5))
    assert math.isclose(
        float(stats.std), math.sqrt(x.var(unbiased=False).item() + 1e-5), rel_tol=1e-6
    )


def test_aux_k_uses_only_dead_latents() -> None:
    pre = torch.tensor([[10.0, 1.0, 2.0, 3.0]], requires_grad=True)
    decoder = torch.eye(4)
    dead = torch.tensor([False, True, True, False])
    residual = torch.tensor([[1.0, 1.0, 2.0, 1.0]])
    residual = torch.cat([residual, residual + 1])
    pre2 = torch.cat([pre, pre])
    loss = aux_k_loss(pre2, residual, decoder, dead, k_aux=2, scale=torch.ones(2, 1))
    loss.backward()
    assert pre.grad is not None
    assert torch.equal(pre.grad[0, ~dead], torch.zeros(2)), "live latents must get no AuxK gradient"
    assert (pre.grad[0, dead] != 0).all()
    none_dead = aux_k_loss(
        pre2, residual, decoder, torch.zeros(4, dtype=torch.bool), 2, torch.ones(2, 1)
    )
    assert float(none_dead) == 0.0
    # fewer dead latents than k_aux scales the loss by #dead / k_aux
    one_dead = torch.tensor([False, True, False, False])
    full = aux_k_loss(pre2, residual, decoder, one_dead, 1, torch.ones(2, 1))
    half = aux_k_loss(pre2, residual, decoder, one_dead, 2, torch.ones(2, 1))
    assert torch.isclose(half, full / 2)


def test_l1_is_weighted_by_decoder_norms() -> None:
    z = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    decoder = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.3, 0.4]])  # norms 2 and 0.5
    assert math.isclose(float(l1_penalty(z, decoder)), ((1 * 2 + 2 * 0.5) + 4 * 0.5) / 2)


def test_parallel_gradient_removed_and_decoder_unit_norm_after_a_step() -> None:
    w = torch.nn.Parameter(normalise_rows_(torch.randn(5, 3)))
    w.grad = torch.randn(5, 3)
    remove_parallel_grad_(w)
    assert torch.allclose((w.grad * w).sum(dim=1), torch.zeros(5), atol=1e-6)
    sae = TopKSAE(8, 16, k=3)
    opt = torch.optim.Adam(sae.parameters(), lr=0.1)
    x = torch.randn(32, 8)
    loss, _, _ = sae.training_loss(x, x, torch.ones(16, dtype=torch.bool))
    loss.backward()
    sae.constrain_gradients()
    opt.step()
    sae.constrain_weights()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(16), atol=1e-6)


def test_decoder_initialised_as_encoder_transpose() -> None:
    sae = TopKSAE(6, 12, k=2)
    expected = sae.W_enc.detach().t() / sae.W_enc.detach().t().norm(dim=1, keepdim=True)
    assert torch.allclose(sae.W_dec, expected)


def test_batchtopk_threshold_used_at_inference() -> None:
    sae = BatchTopKSAE(8, 20, k=2)
    _randomise(sae)
    x = torch.randn(6, 8)
    sae.train()
    assert int((sae.encode(x) > 0).sum()) <= 2 * 6
    sae.activation.threshold.fill_(0.05)  # type: ignore[union-attr]
    sae.eval()
    pre = sae.pre_activations(x)
    z = sae.encode(x)
    assert torch.equal(z > 0, pre > 0.05)
    assert torch.equal(z[z > 0], pre[pre > 0.05])
    torch.testing.assert_close(
        sae.encode(x[:1]), z[:1], msg="inference must not depend on the batch"
    )


# ---- the API on real activations -----------------------------------------------------------


def _modules(d: int) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [
        TopKSAE(d, 4 * d, k=16),
        BatchTopKSAE(d, 4 * d, k=16),
        ReluL1SAE(d, 4 * d, l1_coefficient=1e-3),
        Transcoder(d, 4 * d, d, encoder_kind="topk", k=16),
        NeuronBasis(d),
    ]


def test_residue_attribution_sums_to_pooled_pre_activation(acts: RealActivations) -> None:
    residues = torch.from_numpy(acts.residues[3][acts.offsets[0] : acts.offsets[1]]).double()
    pooled = residues.mean(dim=0, keepdim=True)
    for module in _modules(residues.shape[1]):
        module = module.double()
        _randomise(module)
        terms = module.residue_attribution(residues)
        assert terms.shape == (residues.shape[0], module.n_latents)
        torch.testing.assert_close(terms.sum(dim=0, keepdim=True), module.pre_activations(pooled))


def test_forward_sparse_is_forward_in_csr(acts: RealActivations) -> None:
    """The serving path: the same latents as ``forward`` (as scipy's CSR of them, exactly) and
    the same reconstruction up to float rounding, for every kind of dictionary."""
    from scipy import sparse

    x = torch.from_numpy(acts.residues[3][: acts.offsets[2]])
    for module in _modules(x.shape[1]):
        _randomise(module)
        if isinstance(module, BatchTopKSAE):
            module.activation.threshold.fill_(0.1)  # type: ignore[union-attr]
        module.eval()
        with torch.inference_mode():
            recon, z = module.forward(x)
            codes = module.forward_sparse(x)
        ref = sparse.csr_matrix(z.numpy())
        assert 0 < ref.nnz < z.numel() // 2, module.kind  # sparse, and not empty
        assert np.array_equal(codes.indptr.numpy(), ref.indptr), module.kind
        assert np.array_equal(codes.indices.numpy(), ref.indices), module.kind
        assert np.array_equal(codes.values.numpy(), ref.data), module.kind
        torch.testing.assert_close(codes.recon, recon, rtol=1e-4, atol=1e-4)


def test_inference_pre_activations_equal_training_ones(acts: RealActivations) -> None:
    x = torch.from_numpy(acts.residues[3][: acts.offsets[1]])
    sae = TopKSAE(x.shape[1], 4 * x.shape[1], k=16)
    _randomise(sae)
    with_grad = sae.pre_activations(x)
    with torch.inference_mode():
        assert torch.equal(sae.pre_activations(x), with_grad.detach())


def test_save_load_round_trip_and_refuses_mismatch(acts: RealActivations, tmp_path: Path) -> None:
    x = torch.from_numpy(acts.pooled[3][:50])
    prov = Provenance("esm2_t4_2M_sprot14mini", acts.model_sha256, 3, None, "protein", "layer_norm")
    for module in _modules(x.shape[1]):
        _randomise(module)
        module.eval()
        folder = tmp_path / module.kind
        p = (
            prov
            if module.kind != "neurons"
            else Provenance(**{**prov.__dict__, "normalisation": "none"})
        )
        p = Provenance(**{**p.__dict__, "out_layer": 4}) if module.kind == "transcoder" else p
        save_dictionary(module, folder, p, config={"note": "test"})
        loaded = load_dictionary(folder, expect=p)
        assert type(loaded) is type(module)
        assert torch.equal(loaded.encode(x), module.encode(x))
    with pytest.raises(ValueError, match=r"layer: saved 3, expected 2"):
        load_dictionary(tmp_path / "topk", expect=Provenance(**{**prov.__dict__, "layer": 2}))
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        load_dictionary(
            tmp_path / "topk", expect=Provenance(**{**prov.__dict__, "checkpoint_sha256": "0" * 64})
        )
    with pytest.raises(ValueError, match="level"):
        load_dictionary(
            tmp_path / "topk", expect=Provenance(**{**prov.__dict__, "level": "residue"})
        )
    weights = tmp_path / "topk" / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="sha256"):
        load_dictionary(tmp_path / "topk")


def test_saelens_export_layout_and_latents(acts: RealActivations, tmp_path: Path) -> None:
    x = torch.from_numpy(acts.pooled[3][:20])
    sae = TopKSAE(x.shape[1], 4 * x.shape[1], k=16)
    _randomise(sae)
    export_saelens(sae, tmp_path / "lens")
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 16
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    assert "layer_norm(x, (192,), eps=1e-05)" in cfg["metadata"]["usage"]
    w = load_file(str(tmp_path / "lens" / "sae_weights.safetensors"))
    assert w["W_enc"].shape == (192, 768) and w["W_dec"].shape == (768, 192)
    # Our encoding from the exported tensors (biased LN) reproduces the module's latents.
    x_n, _ = layer_norm(x)
    z = topk_relu((x_n - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 16)
    torch.testing.assert_close(z, sae.encode(x).detach())
    tc = Transcoder(192, 384, 192, encoder_kind="batchtopk", k=8)
    with pytest.raises(ValueError, match="no inference threshold"):
        export_saelens(tc, tmp_path / "tc")  # BatchTopK before training has no JumpReLU form
    tc.activation.update_threshold(torch.tensor([[0.5, 0.0]]))
    export_saelens(tc, tmp_path / "tc")
    tc_cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert tc_cfg["architecture"] == "jumprelu_transcoder" and tc_cfg["d_out"] == 192
    assert tc_cfg["apply_b_dec_to_input"] is False


def test_residue_reconstructor_reconstructs_every_position(acts: RealActivations) -> None:
    residues = torch.from_numpy(acts.residues[3][: 2 * 40]).reshape(2, 40, -1)
    sae = TopKSAE(192, 768, k=16)
    _randomise(sae)
    out = residue_reconstructor(sae)(residues)
    assert out.shape == residues.shape
    torch.testing.assert_close(out[1, 7], sae(residues[1, 7:8])[0][0].detach())
    for refused in (Transcoder(192, 384, 192, k=8), NeuronBasis(192)):
        with pytest.raises(ValueError, match="splice"):
            residue_reconstructor(refused)


def test_fold_standardisation_keeps_the_transcoder_function(acts: RealActivations) -> None:
    """Training-time input standardisation and target scale fold into plain weights exactly."""
    x = torch.from_numpy(acts.pooled[3][:64]).double()
    for kind in ("topk", "batchtopk", "relu_l1"):
        torch.manual_seed(0)
        module = Transcoder(192, 384, 192, encoder_kind=kind, k=8).double()
        _randomise(module)
        if kind == "batchtopk":
            module.activation.threshold.fill_(0.05)  # type: ignore[operator]
        module.eval()
        shift = layer_norm(x)[0].mean(dim=0)
        module.standardise_input(shift, 0.25)
        before, z_before = module(x)
        module.fold_standardisation_(3.0)
        after, z_after = module(x)
        assert not module.in_shift.any() and float(module.in_scale) == 1.0
        assert set(module.state_dict()) == {"W_enc", "b_enc", "W_dec", "b_dec"} | (
            {"activation.threshold"} if kind == "batchtopk" else set()
        )
        torch.testing.assert_close(after, 3.0 * before)
        assert torch.equal(z_after > 0, z_before > 0)
