"""Our exports loaded by the libraries themselves: SAELens 6.x (``SAE.load_from_disk``) and
OpenAI's ``sparse_autoencoder.Autoencoder`` (vendored, not on PyPI), on real ESM2 activations.

Dictionaries are trained briefly on real activations (a trained pre-bias cancels the common
direction of LayerNorm'd vectors, so small scale errors show up as they would on the demo). The
residue SAEs read layer 4 (per-residue std ≈ 1: where SAELens' ε outside the square root matters
most), the protein ones layer 3 (std ≈ 15).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sae_lens import SAE  # the saelens extra (make install)
from safetensors.torch import load_file

from app.sae import SparseDictionary, export_saelens, save_dictionary
from app.sae.functional import LN_EPS, layer_norm
from app.sae.io import Provenance
from tests.real_embeddings import RealActivations, cached_real_activations
from trainer.train import SaeSpec, train_dictionary

KINDS: dict[str, dict[str, Any]] = {
    "topk": dict(kind="topk", k=16),
    "batchtopk": dict(kind="batchtopk", k=16),
    "relu_l1": dict(kind="relu_l1", l1_coefficient=3e-3),
}
EXPECTED_ARCHITECTURE = {"topk": "topk", "batchtopk": "jumprelu", "relu_l1": "standard"}
TRANSCODER_ARCHITECTURE = {"topk": "topk", "batchtopk": "jumprelu_transcoder",
                           "relu_l1": "transcoder"}  # fmt: skip


@dataclass
class Trained:
    module: SparseDictionary
    x_test: torch.Tensor  # held-out real activations (raw, un-normalised)
    y_test: torch.Tensor | None = None  # transcoders: the next layer


@pytest.fixture(scope="module")
def acts(request: pytest.FixtureRequest, shared_dir: Path) -> RealActivations:
    return cached_real_activations(request.config, shared_dir)


def _train(x: np.ndarray, y: np.ndarray | None = None, **kw: Any) -> SparseDictionary:
    spec = SaeSpec(name="t", layer=3, expansion=4, steps=200, lr=1e-3, batch_size=128,
                   dead_threshold=50, eval_every=100, **kw)  # fmt: skip
    val = slice(len(x) - 64, None)
    train = slice(0, len(x) - 64)
    module, _ = train_dictionary(spec, x[train], None if y is None else y[train], x[val],
                                 None if y is None else y[val], progress=False)  # fmt: skip
    assert isinstance(module, SparseDictionary)
    return module.eval()


@pytest.fixture(scope="module")
def trained(acts: RealActivations) -> dict[str, Trained]:
    """Every kind at both levels, and the three transcoders (protein level, L3 -> L4)."""
    torch.manual_seed(0)
    out: dict[str, Trained] = {}
    residues, pooled = acts.residues[4], acts.pooled[3]
    split_r, split_p = 6000, 240
    for name, kw in KINDS.items():
        out[f"residue-{name}"] = Trained(
            _train(residues[:split_r], level="residue", **kw),
            torch.from_numpy(residues[split_r : split_r + 3000]),
        )
        out[f"protein-{name}"] = Trained(
            _train(pooled[:split_p], level="protein", **kw), torch.from_numpy(pooled[split_p:])
        )
        tc_kw = {"encoder_kind": kw["kind"]} | {k: v for k, v in kw.items() if k != "kind"}
        out[f"transcoder-{name}"] = Trained(
            _train(pooled[:split_p], acts.pooled[4][:split_p], level="protein",
                   kind="transcoder", out_layer=4, **tc_kw),
            torch.from_numpy(pooled[split_p:]),
            torch.from_numpy(acts.pooled[4][split_p:]),
        )  # fmt: skip
    return out


def _active_sets_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(a > 0, b > 0))


@pytest.mark.slow
@pytest.mark.parametrize("level", ["residue", "protein"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_saelens_loader_gives_our_latents_exactly(
    trained: dict[str, Trained], tmp_path: Path, level: str, kind: str
) -> None:
    """Default export: SAELens normalises nothing, the user applies torch's layer_norm (= ours)."""
    t = trained[f"{level}-{kind}"]
    export_saelens(t.module, tmp_path / "lens")
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    sae = SAE.load_from_disk(str(tmp_path / "lens"))
    assert cfg["architecture"] == EXPECTED_ARCHITECTURE[kind] == sae.cfg.architecture()
    assert sae.cfg.normalize_activations == "none" and sae.cfg.apply_b_dec_to_input
    assert "exact" in sae.cfg.metadata.usage  # our metadata survives SAELens' loader
    x = t.x_test
    torch.testing.assert_close(F.layer_norm(x, (x.shape[1],), eps=LN_EPS), layer_norm(x)[0])
    with torch.no_grad():
        ours = t.module.encode(x)
        x_ln = F.layer_norm(x, (x.shape[1],), eps=LN_EPS)
        theirs = sae.encode(x_ln)
        delta = float((ours - theirs).abs().max())
        print(f"{level} {kind}: max |Δ| {delta:.3g}, max latent {float(ours.max()):.3g}, "
              f"rows {len(x)}, mean L0 {float((ours > 0).sum(1).float().mean()):.1f}")  # fmt: skip
        assert delta <= 1e-5 and _active_sets_equal(ours, theirs)
        assert float((ours > 0).sum(1).float().mean()) > 1  # a dictionary that fires
        # Decode: LayerNorm space; our documented un-normalisation gives our reconstruction.
        _, stats = layer_norm(x)
        torch.testing.assert_close(
            sae.decode(theirs) * stats.std + stats.mean, t.module(x)[0], atol=1e-4, rtol=1e-5
        )


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_saelens_own_layer_norm_is_eps_close_with_the_scale_folded(
    trained: dict[str, Trained], tmp_path: Path, kind: str
) -> None:
    """normalize=layer_norm: SAELens' (x−μ)/(unbiased std + ε) on raw activations. With
    sqrt(d/(d−1)) folded the per-sample mismatch is (sqrt(v)+ε/c)/sqrt(v+ε), within ε/sqrt(v)
    of 1: the linear term of each pre-activation is off by at most that share. Without the fold
    (the old export) it was off by 0.26% and TopK active sets changed."""
    for level in ("residue", "protein"):
        t = trained[f"{level}-{kind}"]
        export_saelens(t.module, tmp_path / level, normalize="layer_norm")
        sae = SAE.load_from_disk(str(tmp_path / level))
        assert sae.cfg.normalize_activations == "layer_norm"
        x = t.x_test
        x_n, stats = layer_norm(x)
        with torch.no_grad():
            ours, theirs = t.module.encode(x), sae.encode(x)
            linear = (x_n @ t.module.W_enc).abs()  # the term the normalisation scales
            bound = (LN_EPS / stats.std) * linear + 2e-6  # + float32 rounding
            both = (ours > 0) & (theirs > 0)
            excess = ((ours - theirs).abs() - bound)[both]
            print(f"layer_norm {level} {kind}: max |Δ| {float((ours - theirs).abs().max()):.3g}, "
                  f"rows with equal active sets {float(((ours > 0) == (theirs > 0)).all(1).float().mean()):.4f}")  # fmt: skip
            assert float(excess.max()) <= 0
            # Not exact: where two pre-activations tie within that share (TopK's k-th and
            # k+1-th, ReLU's ~1e-7 ones), the active set can differ (1 of 3,000 residues, TopK).
            same_rows = ((ours > 0) == (theirs > 0)).all(1).float().mean()
            assert float(same_rows) >= 0.99
            # The fold matters: SAELens' layer_norm on the unfolded weights is far off.
            c = float(np.sqrt(x.shape[1] / (x.shape[1] - 1)))
            sae.W_enc.div_(c)
            sae.b_dec.mul_(c)
            unfolded = sae.encode(x)
            assert float((ours - unfolded).abs().max()) > 100 * float(bound.max())


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_saelens_transcoders_predict_like_ours(
    trained: dict[str, Trained], tmp_path: Path, kind: str
) -> None:
    """Transcoders: no pre-bias, output not un-normalised (SAELens' transcoders). SAELens has no
    TopK transcoder: a d_out = d_in one is a topk SAE without pre-bias, normalize=none only."""
    t = trained[f"transcoder-{kind}"]
    export_saelens(t.module, tmp_path / "tc")
    sae = SAE.load_from_disk(str(tmp_path / "tc"))
    assert sae.cfg.architecture() == TRANSCODER_ARCHITECTURE[kind]
    assert not sae.cfg.apply_b_dec_to_input
    x = t.x_test
    with torch.no_grad():
        ours, theirs = t.module.encode(x), sae.encode(F.layer_norm(x, (x.shape[1],), eps=LN_EPS))
        assert float((ours - theirs).abs().max()) <= 1e-5 and _active_sets_equal(ours, theirs)
        torch.testing.assert_close(sae.decode(theirs), t.module(x)[0], atol=1e-4, rtol=1e-5)
    if kind == "topk":
        with pytest.raises(ValueError, match="no TopK transcoder"):
            export_saelens(t.module, tmp_path / "ln", normalize="layer_norm")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["topk", "relu_l1", "batchtopk"])
def test_openai_autoencoder_on_our_safetensors(
    trained: dict[str, Trained], tmp_path: Path, kind: str
) -> None:
    """The recipe of docs/export.md: our ``sae.safetensors`` into OpenAI's ``Autoencoder`` with its
    own LN switched off and torch's layer_norm applied first; BatchTopK's threshold by hand."""
    from tests.vendor.openai_sparse_autoencoder.model import LN, Autoencoder

    t = trained[f"residue-{kind}"]
    prov = Provenance(base_model="mini", checkpoint_sha256="0" * 64, layer=4, out_layer=None,
                      level="residue", normalisation="layer_norm")  # fmt: skip
    save_dictionary(t.module, tmp_path / "ours", prov)
    # --- the documented recipe, verbatim ---
    w = load_file(str(tmp_path / "ours" / "sae.safetensors"))
    n_latents, d_in = w["W_enc"].shape[1], w["W_enc"].shape[0]
    state = {
        "pre_bias": w["b_dec"],
        "latent_bias": w["b_enc"],
        "encoder.weight": w["W_enc"].T.contiguous(),
        "decoder.weight": w["W_dec"].T.contiguous(),
        "stats_last_nonzero": torch.zeros(n_latents, dtype=torch.long),
        "latents_activation_frequency": torch.ones(n_latents),
        "latents_mean_square": torch.zeros(n_latents),
        "activation": "TopK" if kind == "topk" else "ReLU",
        "activation_state_dict": {"k": t.module.k, "postact_fn": "ReLU"} if kind == "topk" else {},
    }
    ae = Autoencoder.from_state_dict(state)
    ae.normalize = False  # from_state_dict turns its LN (unbiased std + eps) on for TopK
    x = t.x_test
    with torch.no_grad():
        x_ln = F.layer_norm(x, (d_in,), eps=1e-5)
        z, _ = ae.encode(x_ln)
        if kind == "batchtopk":
            z = z * (z > w["activation.threshold"])
        recon = ae.decode(z) * (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt() + x.mean(
            -1, keepdim=True
        )
        # --- end of recipe ---
        ours = t.module.encode(x)
        assert float((ours - z).abs().max()) <= 1e-5 and _active_sets_equal(ours, z)
        torch.testing.assert_close(recon, t.module(x)[0], atol=1e-4, rtol=1e-5)
        # Its own LN is not ours: the recipe's layer_norm step is needed.
        assert not torch.allclose(LN(x)[0], x_ln, atol=1e-4)
