"""Masked-LM loss of ESM2 with one layer's representation replaced: the basis of "loss recovered".

Layer ``L`` means exactly what fair-esm returns as ``representations[L]``:

- ``0 <= L < num_layers``: the residual stream entering transformer block ``L`` (``L = 0`` is the
  scaled token embedding). We replace the *input* of block ``L`` with a forward pre-hook.
- ``L == num_layers``: the output of the final LayerNorm (``emb_layer_norm_after``), which feeds
  the LM head directly. An SAE on that layer was trained on post-LayerNorm vectors, so its
  reconstruction replaces the LayerNorm's *output* (a forward hook); it is not normalised again.

A transcoder from layer ``L`` to ``M`` replaces layer ``M`` by its prediction from layer ``L``
of the same forward pass (``source_layer``; :func:`transcoder_loss_recovered`); its ablation
baseline skips the blocks ``L .. M-1`` (layer ``M`` := layer ``L``, through the final LayerNorm
when ``M`` is the last layer): the loss the transcoded blocks are worth.

Only residue positions are replaced: BOS, EOS and padding keep their clean values (SAEs never saw
them). Masking is deterministic per (seed, sequence index), so clean, zero-ablated and spliced
runs score the same positions; every chosen position becomes ``<mask>`` (the evaluation form of
ESM's masked-LM objective, without the 10%/10% random/kept tokens of training).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from app.esm import LoadedModel, autocast_for, check_sequences, iter_token_batches
from app.esm_window import MAX_RESIDUES

Replace = Callable[[torch.Tensor], torch.Tensor]


def mask_positions(length: int, fraction: float, seed: int, index: int) -> torch.Tensor:
    """Residue positions (0-based) to mask in sequence ``index``: fixed by seed and index alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    count = max(1, round(fraction * length))
    return torch.randperm(length, generator=generator)[:count].sort().values


def _splice_hook(
    loaded: LoadedModel,
    layer: int,
    replace: Replace,
    keep: torch.Tensor,
    source: Callable[[], torch.Tensor] | None = None,
) -> torch.utils.hooks.RemovableHandle:
    """Install the hook replacing layer ``layer``; ``keep`` [B, T] is True where values stay clean.

    ``replace`` sees the layer's own values, or ``source()`` [B, T, d] when given (a transcoder's
    input layer, captured earlier in the same forward pass)."""

    def swap(x_tbd: torch.Tensor) -> torch.Tensor:
        x = x_tbd.transpose(0, 1)  # fair-esm runs blocks as (T, B, d)
        new = replace(x if source is None else source())
        if new.shape != x.shape:
            raise ValueError(
                f"replace returned shape {tuple(new.shape)}, expected {tuple(x.shape)}"
            )
        return torch.where(keep.unsqueeze(-1), x, new.to(x.dtype)).transpose(0, 1)

    model = loaded.model
    if layer == loaded.num_layers:

        def post_hook(_m: torch.nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
            return swap(out)

        return model.emb_layer_norm_after.register_forward_hook(post_hook)

    def pre_hook(_m: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (swap(args[0]), *args[1:])

    return model.layers[layer].register_forward_pre_hook(pre_hook)


def _capture_hook(
    loaded: LoadedModel, layer: int, into: list[torch.Tensor]
) -> torch.utils.hooks.RemovableHandle:
    """Keep layer ``layer`` (the input of block ``layer``, [B, T, d]) of each forward in ``into``."""

    def pre_hook(_m: torch.nn.Module, args: tuple[Any, ...]) -> None:
        into[:] = [args[0].transpose(0, 1)]

    return loaded.model.layers[layer].register_forward_pre_hook(pre_hook)


def masked_lm_loss(
    loaded: LoadedModel,
    sequences: Sequence[str],
    layer: int,
    replace: Replace | None,
    *,
    source_layer: int | None = None,
    mask_fraction: float = 0.15,
    seed: int = 0,
    max_len: int = MAX_RESIDUES,
    max_tokens_per_batch: int = 8192,
) -> float:
    """Mean cross-entropy (nats) over masked residues, with layer ``layer`` replaced by ``replace``.

    ``replace`` maps [B, T, d] -> [B, T, d] position-wise; ``None`` is the clean model. With
    ``source_layer`` (< ``layer``) it maps that layer's values instead of layer ``layer``'s own.
    Sequences longer than ``max_len`` are cropped to their first ``max_len`` residues.
    """
    if not 0 <= layer <= loaded.num_layers:
        raise ValueError(f"layer {layer} outside 0..{loaded.num_layers} of {loaded.name}")
    if source_layer is not None and not 0 <= source_layer < layer:
        raise ValueError(f"source layer {source_layer} must be in 0..{layer - 1}")
    check_sequences(sequences)
    crops = [s[:max_len] for s in sequences]
    alphabet = loaded.alphabet
    total, count = 0.0, 0
    captured: list[torch.Tensor] = []  # the source layer of the current forward pass
    source = None if source_layer is None else (lambda: captured[0])
    with torch.inference_mode(), autocast_for(loaded.device):
        for batch, tokens in iter_token_batches(loaded, crops, max_tokens_per_batch):
            targets = torch.full_like(tokens, -100)
            masked = tokens.clone()
            for row, i in enumerate(batch):
                pos = mask_positions(len(crops[i]), mask_fraction, seed, i).to(tokens.device) + 1
                targets[row, pos] = tokens[row, pos]
                masked[row, pos] = alphabet.mask_idx
            special = (tokens == alphabet.cls_idx) | (tokens == alphabet.eos_idx)
            keep = special | (tokens == alphabet.padding_idx)
            handles = []
            if replace is not None:
                if source_layer is not None:
                    handles.append(_capture_hook(loaded, source_layer, captured))
                handles.append(_splice_hook(loaded, layer, replace, keep, source))
            try:
                logits = loaded.model(masked)["logits"]
            finally:
                for handle in handles:
                    handle.remove()
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
            )
            total += float(loss)
            count += int((targets != -100).sum())
    return total / count


def _recovered(
    loaded: LoadedModel,
    sequences: Sequence[str],
    layer: int,
    ablate: Replace,
    splice: Replace,
    **kwargs: Any,
) -> dict[str, float]:
    """Clean, ablated and spliced CE at ``layer``, and ``(ce_zero - ce_spliced) / (ce_zero -
    ce_clean)``; ``kwargs`` go to every :func:`masked_lm_loss` (``source_layer`` included)."""
    ce_clean = masked_lm_loss(loaded, sequences, layer, None, **kwargs)
    ce_zero = masked_lm_loss(loaded, sequences, layer, ablate, **kwargs)
    ce_spliced = masked_lm_loss(loaded, sequences, layer, splice, **kwargs)
    gap = ce_zero - ce_clean
    return {
        "ce_clean": ce_clean,
        "ce_zero": ce_zero,
        "ce_spliced": ce_spliced,
        "loss_recovered": (ce_zero - ce_spliced) / gap if gap != 0 else float("nan"),
    }


def loss_recovered(
    loaded: LoadedModel,
    sequences: Sequence[str],
    layer: int,
    reconstruct: Replace,
    **kwargs: Any,
) -> dict[str, float]:
    """Clean, zero-ablated and spliced CE, and ``(ce_zero - ce_spliced) / (ce_zero - ce_clean)``."""
    return _recovered(loaded, sequences, layer, torch.zeros_like, reconstruct, **kwargs)


def transcoder_loss_recovered(
    loaded: LoadedModel,
    sequences: Sequence[str],
    in_layer: int,
    out_layer: int,
    predict: Replace,
    **kwargs: Any,
) -> dict[str, float]:
    """Loss recovered by a transcoder ``in_layer -> out_layer`` spliced in for the blocks between.

    ``predict`` maps layer ``in_layer`` [B, T, d] to a replacement for layer ``out_layer``. The
    ablation (``ce_zero``) skips those blocks: layer ``out_layer`` := layer ``in_layer`` (passed
    through the final LayerNorm when ``out_layer`` is the last layer, as fair-esm reports it).
    """
    if not 0 <= in_layer < out_layer <= loaded.num_layers:
        raise ValueError(
            f"a transcoder maps a layer to a deeper one, got {in_layer} -> {out_layer}"
        )
    final = loaded.model.emb_layer_norm_after
    last = out_layer == loaded.num_layers

    def skip(x: torch.Tensor) -> torch.Tensor:
        # ``forward`` itself: calling the module would re-enter the splice hook it carries.
        return final.forward(x) if last else x

    return _recovered(loaded, sequences, out_layer, skip, predict, **kwargs, source_layer=in_layer)
