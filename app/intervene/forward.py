"""ESM2's forward split at one layer: the stream at layer ``L``, then the logits from it.

Layer ``L`` means what fair-esm returns as ``representations[L]`` (see ``trainer.lm_loss``): the
input of block ``L`` for ``L < num_layers``, the final LayerNorm's output for ``L == num_layers``.
:func:`hidden_at` then :func:`logits_from` with the stream unchanged give ``model(tokens)
["logits"]``: bit for bit with ``attention="fair-esm"``, up to float rounding with the fused kernel.
"""

from __future__ import annotations

import torch

from app.esm import LoadedModel, apply_block, forward_representations


def hidden_at(loaded: LoadedModel, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream ``[B, T, d]`` at ``layer`` (BOS, EOS and padding included)."""
    if not 0 <= layer <= loaded.num_layers:
        raise ValueError(f"layer {layer} outside 0..{loaded.num_layers} of {loaded.name}")
    return forward_representations(loaded.model, tokens, [layer], loaded.attention)[layer]


def logits_from(
    loaded: LoadedModel, hidden: torch.Tensor, tokens: torch.Tensor, layer: int
) -> torch.Tensor:
    """``[B, T, vocab]`` logits of the rest of the model run on ``hidden`` (the stream at ``layer``)."""
    model = loaded.model
    padding = tokens.eq(model.padding_idx)
    mask = padding if padding.any() else None
    x = hidden.transpose(0, 1)  # fair-esm runs blocks as (T, B, d)
    if layer < loaded.num_layers:
        for block in model.layers[layer:]:
            x = apply_block(block, x, mask, loaded.attention)
        x = model.emb_layer_norm_after(x)
    return model.lm_head(x.transpose(0, 1))


def full_logits(loaded: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    """``model(tokens)["logits"]`` through the same blocks as the split forward (fused attention
    when the model is loaded so)."""
    return logits_from(loaded, hidden_at(loaded, tokens, 0), tokens, 0)
