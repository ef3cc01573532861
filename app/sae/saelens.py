"""Export to a SAELens 6.x folder (``cfg.json`` + ``sae_weights.safetensors``).

Our LayerNorm is ``(x − μ) / sqrt(v + ε)`` with ``v`` the *biased* variance (divide by d) and
ε = 1e-5 inside the square root. SAELens' ``normalize_activations="layer_norm"`` (and OpenAI's
``sparse_autoencoder.model.LN``) is ``(x − μ) / (s + ε)`` with ``s`` the *unbiased* std
``= c·sqrt(v)``, ``c = sqrt(d/(d−1))``, ε outside the root, and un-normalises with ``s`` alone.
Its normalised input is therefore ~1/c of ours (latents ~0.26% *smaller* at d = 192, not larger;
the pre-bias b_dec does not scale, so active sets change too), and no choice of weights makes a
per-sample factor ``(c·sqrt(v) + ε) / sqrt(v + ε)`` disappear. Two exports follow:

``normalize="none"`` (exact, the default)
    SAELens normalises nothing; the user applies our LayerNorm first,
    ``torch.nn.functional.layer_norm(x, (d_in,), eps=1e-5)`` (which is ours exactly), and
    ``sae.encode`` then gives our latents up to float rounding. SAE outputs are in LayerNorm
    space: ``sae.decode(z) * sqrt(v + 1e-5) + μ`` is our reconstruction.
``normalize="layer_norm"`` (SAELens normalises; ε-close, not exact)
    ``c`` is folded into the weights (``W_enc·c``, ``b_dec/c``, ``W_dec/c``), so SAELens'
    pre-activations are ours with ``sqrt(v + ε)`` replaced by ``sqrt(v) + ε/c``: a relative
    difference of the linear term below ε/sqrt(v) per sample (on shared latents max |Δ| ~4e-6
    at layer 3, where sqrt(v) ≈ 15, ~2e-5 at layer 4, where sqrt(v) ≈ 1). Near-ties can swap a
    latent in or out (1 of 3,000 layer-4 residues under TopK), so this is not exact.

BatchTopK at inference is a JumpReLU with one global threshold: ``jumprelu``. ReLU+L1 is
``standard``. Transcoders (no pre-bias, output not un-normalised, as SAELens' transcoders):
ReLU → ``transcoder``, BatchTopK → ``jumprelu_transcoder``; SAELens has no TopK transcoder, so a
TopK one with d_out = d_in is a ``topk`` SAE without the pre-bias whose ``decode`` is the
prediction (``normalize="none"`` only: SAELens' ``layer_norm`` would un-normalise it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from app.sae.functional import LN_EPS
from app.sae.io import read_provenance
from app.sae.models import BatchTopK, SparseDictionary

SaelensNormalize = Literal["none", "layer_norm"]
SAELENS_NORMALIZE: tuple[SaelensNormalize, ...] = ("none", "layer_norm")
# The cfg format this writes; without it SAELens treats cfg.json as pre-6.0 and drops metadata.
SAELENS_FORMAT_VERSION = "6.0.0"


def unbiased_scale(d_in: int) -> float:
    """``c = sqrt(d/(d−1))``: SAELens' std over ours on the same vector (ε aside)."""
    return math.sqrt(d_in / (d_in - 1))


def usage_note(module: SparseDictionary, normalize: SaelensNormalize) -> str:
    """What a SAELens user must do to get our latents, in one paragraph (goes into cfg.json)."""
    if module.normalisation == "none":
        return "trained without input normalisation: sae.encode(x) on raw activations is exact"
    ln = f"torch.nn.functional.layer_norm(x, ({module.d_in},), eps={LN_EPS:g})"
    out = (
        " decode() is the prediction in the target's units (a transcoder: not un-normalised)."
        if module.is_transcoder
        else f" decode() is in LayerNorm space: multiply by sqrt(biased var(x) + {LN_EPS:g}) "
        "and add mean(x) for our reconstruction."
    )
    if normalize == "none":
        return f"exact: call sae.encode({ln}), not sae.encode(x).{out}"
    c = unbiased_scale(module.d_in)
    return (
        "approximate: SAELens' layer_norm divides by unbiased std + eps; sqrt(d/(d-1)) = "
        f"{c:.6f} is folded into W_enc (and 1/c into b_dec, W_dec), so sae.encode(x) differs "
        "from ours only by eps placement (relative error of the linear term < eps/std(x) per "
        f"sample). For exact latents use the normalize=none export with {ln}."
    )


def _architecture(
    module: SparseDictionary, normalize: SaelensNormalize
) -> tuple[str, dict[str, Any]]:
    """SAELens architecture name and its extra cfg fields, or ValueError when none fits."""
    activation = module.activation
    if isinstance(activation, BatchTopK) and float(activation.threshold) < 0:
        raise ValueError("this BatchTopK dictionary has no inference threshold yet")
    if not module.is_transcoder:
        if isinstance(activation, BatchTopK):
            return "jumprelu", {}
        if module.encoder_kind == "topk":
            return "topk", {"k": module.k, "rescale_acts_by_decoder_norm": False}
        return "standard", {}
    if module.encoder_kind == "relu_l1":
        return "transcoder", {"d_out": module.d_out}
    if isinstance(activation, BatchTopK):
        return "jumprelu_transcoder", {"d_out": module.d_out}
    if module.d_out != module.d_in or (
        normalize == "layer_norm" and module.normalisation == "layer_norm"
    ):
        raise ValueError(
            "SAELens has no TopK transcoder; a TopK transcoder exports as a topk SAE only with "
            "d_out = d_in and normalize=none (SAELens' layer_norm would un-normalise its output)"
        )
    return "topk", {"k": module.k, "rescale_acts_by_decoder_norm": False}


def export_saelens(
    module: nn.Module,
    directory: str | Path,
    source_dir: str | Path | None = None,
    normalize: SaelensNormalize = "none",
) -> Path:
    """Write a SAELens folder; ``source_dir`` (a saved dictionary) adds its provenance.

    ``normalize``: ``none`` (exact, the user applies our LayerNorm) or ``layer_norm`` (SAELens
    normalises, ε-close); see the module docstring. ValueError when SAELens cannot express it.
    """
    if not isinstance(module, SparseDictionary):
        raise ValueError("only trained dictionaries export to SAELens (not the neuron baseline)")
    if normalize not in SAELENS_NORMALIZE:
        raise ValueError(f"normalize must be one of {SAELENS_NORMALIZE}, got {normalize!r}")
    architecture, extra = _architecture(module, normalize)
    folded = normalize == "layer_norm" and module.normalisation == "layer_norm"
    c = unbiased_scale(module.d_in) if folded else 1.0
    weights: dict[str, Tensor] = {
        "W_enc": module.W_enc * c,
        "b_enc": module.b_enc,
        # A transcoder's output is not un-normalised, so its decoder keeps its scale.
        "W_dec": module.W_dec / (1.0 if module.is_transcoder else c),
        "b_dec": module.b_dec / (1.0 if module.is_transcoder else c),
    }
    if isinstance(module.activation, BatchTopK):
        weights["threshold"] = module.activation.threshold.expand(module.n_latents)
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "usage": usage_note(module, normalize),
        "protsae": module.config() | {"saelens_normalize": normalize, "folded_scale": c},
    }
    if source_dir is not None:
        prov = read_provenance(source_dir)
        metadata.update(
            model_name=prov.base_model,
            checkpoint_sha256=prov.checkpoint_sha256,
            hook_name=f"esm.layers.{prov.layer}",
            level=prov.level,
            pooling="mean over residues, BOS/EOS excluded" if prov.level == "protein" else None,
        )
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": module.d_in,
        "d_sae": module.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": module.pre_bias,
        "normalize_activations": "layer_norm" if folded else "none",
        "reshape_activations": "none",
        **extra,
        "metadata": metadata,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to(torch.float32).cpu().contiguous() for name, t in weights.items()}
    save_file(tensors, str(directory / "sae_weights.safetensors"))
    (directory / "cfg.json").write_text(json.dumps(cfg, indent=2))
    return directory
