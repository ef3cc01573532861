"""Splicing a dictionary's reconstruction into the language model (the basis of loss recovered).

``trainer.lm_loss.loss_recovered`` replaces layer L's residual stream ``h [B, T, d]`` by
``reconstruct(h)``. For residue-level SAEs that is each position's own reconstruction.

For protein-level (pooled) SAEs we also reconstruct *every position's* vector with the SAE. This is
the honest choice: the alternative — add (recon(pooled) − pooled) to every residue — only edits the
per-protein mean, leaves each residue's deviation from it untouched, and so recovers nearly all of
the loss by construction (compared with zero-ablating the whole stream) whatever the SAE's quality.
Reconstructing each residue asks the stricter question of whether the pooled-trained dictionary
spans what the model uses; expect lower figures than for residue-level SAEs and report them as such.
BOS/EOS/padding positions are reconstructed too; ``lm_loss`` scores only the masked residues.

Transcoders (:func:`transcoder_predictor`) replace their *output* layer with their prediction from
the input layer, position by position, by the same rule: a residue-level transcoder predicts layer
L+1 itself; a protein-level one predicts pooled(L+1) − pooled(L), so each residue becomes its own
layer-L vector plus the predicted change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from app.sae.models import SparseDictionary


def residue_reconstructor(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """``h [B, T, d] -> [B, T, d]``: every position replaced by the SAE's reconstruction.

    Transcoders and the neuron baseline are refused: a transcoder predicts another quantity (layer
    L+1 or a difference), which cannot replace layer L (:func:`transcoder_predictor` splices it
    at L+1), and neurons do not reconstruct.
    """
    if not isinstance(module, SparseDictionary) or module.is_transcoder:
        raise ValueError(
            f"{getattr(module, 'kind', type(module).__name__)}: only SAEs reconstruct their "
            "input (a transcoder splices in through transcoder_predictor; raw neurons have no "
            "loss-recovered splice)"
        )
    return _per_position(module)


def _per_position(module: SparseDictionary) -> Callable[[Tensor], Tensor]:
    """``h [B, T, d_in] -> [B, T, d_out]``: the dictionary's output at every position."""
    module.eval()
    dtype = module.W_dec.dtype

    @torch.no_grad()
    def apply(h: Tensor) -> Tensor:
        batch, length, d = h.shape
        # The language model may sit on a GPU while the dictionary stays where it was trained.
        out, _ = module(h.reshape(batch * length, d).to(device=module.W_dec.device, dtype=dtype))
        return out.reshape(batch, length, -1).to(device=h.device, dtype=h.dtype)

    return apply


def transcoder_predictor(module: nn.Module, adds_input: bool) -> Callable[[Tensor], Tensor]:
    """``x_L [B, T, d] -> [B, T, d]``: each position's layer-(L+1) vector as the transcoder has it.

    ``adds_input``: the transcoder was trained on the difference ``L+1 − L`` (the seed paper's
    protein-level target), so its prediction is added to the input.
    """
    if not isinstance(module, SparseDictionary) or not module.is_transcoder:
        raise ValueError(f"{getattr(module, 'kind', type(module).__name__)} is not a transcoder")
    predict = _per_position(module)
    return (lambda x: x + predict(x)) if adds_input else predict
