"""Export to a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) for interoperability.

Weights map one to one (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec). Differences a
SAELens user must know are written into ``metadata``: our LayerNorm divides by the *biased* std
with eps inside the square root, SAELens's ``layer_norm`` by the unbiased std plus eps, so its
latents come out ~sqrt(d/(d−1)) larger and recon differs by that scale on the un-normalisation.
BatchTopK at inference is a JumpReLU with one global threshold, exported as such.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from app.sae.io import read_provenance
from app.sae.models import BatchTopK, SparseDictionary

LN_NOTE = (
    "trained with per-sample LayerNorm (x - mean) / sqrt(biased var + 1e-5); SAELens layer_norm "
    "uses (x - mean) / (unbiased std + 1e-5): latents differ by about sqrt(d/(d-1))"
)


def export_saelens(
    module: nn.Module, directory: str | Path, source_dir: str | Path | None = None
) -> Path:
    """Write a SAELens-style folder; ``source_dir`` (a saved dictionary) adds its provenance."""
    if not isinstance(module, SparseDictionary):
        raise ValueError("only trained dictionaries export to SAELens (not the neuron baseline)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights: dict[str, Tensor] = {
        "W_enc": module.W_enc,
        "W_dec": module.W_dec,
        "b_enc": module.b_enc,
        "b_dec": module.b_dec,
    }
    metadata: dict[str, Any] = {"ln_note": LN_NOTE, "protsae": module.config()}
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
        "d_in": module.d_in,
        "d_sae": module.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": module.pre_bias,
        "reshape_activations": "none",
        "metadata": metadata,
    }
    activation = module.activation
    if module.is_transcoder:
        # No output un-normalisation: not expressible as a layer_norm SAE; a transcoder config.
        cfg.update(architecture="transcoder", d_out=module.d_out, normalize_activations="none")
        cfg["metadata"]["input_normalisation"] = LN_NOTE + "; the output is not un-normalised"
        cfg["metadata"]["encoder_kind"] = module.encoder_kind
        if module.k is not None:
            cfg["k"] = module.k
    else:
        cfg["normalize_activations"] = (
            "layer_norm" if module.normalisation == "layer_norm" else "none"
        )
        if isinstance(activation, BatchTopK):
            cfg["architecture"] = "jumprelu"
            weights["threshold"] = activation.threshold.expand(module.n_latents)
        elif module.encoder_kind == "topk":
            cfg.update(architecture="topk", k=module.k, rescale_acts_by_decoder_norm=False)
        else:
            cfg["architecture"] = "standard"
    tensors = {name: t.detach().to(torch.float32).cpu().contiguous() for name, t in weights.items()}
    save_file(tensors, str(directory / "sae_weights.safetensors"))
    (directory / "cfg.json").write_text(json.dumps(cfg, indent=2))
    return directory
