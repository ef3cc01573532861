"""Masked-LM loss with a spliced layer, checked against a hand-written ESM2 forward."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from app.esm import LoadedModel
from tests.realdata import human_proteins
from trainer.lm_loss import (
    loss_recovered,
    mask_positions,
    masked_lm_loss,
    transcoder_loss_recovered,
)


@pytest.fixture(scope="module")
def held_out(shared_dir: Path) -> list[str]:
    rows = human_proteins(shared_dir, 120)
    return [r["sequence"] for r in rows if len(r["sequence"]) <= 300][:12]


def _masked_inputs(
    loaded: LoadedModel, seqs: list[str]
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per sequence: it, its tokens, its masked positions and the masked embedding (T, 1, d),
    written out by hand (token dropout's rescaling included) for the hand-written forwards."""
    model, alphabet = loaded.model, loaded.alphabet
    for i, seq in enumerate(seqs):
        tokens = loaded.batch_converter([("x", seq)])[2]
        pos = mask_positions(len(seq), 0.15, 0, i) + 1
        masked = tokens.clone()
        masked[0, pos] = alphabet.mask_idx
        x = model.embed_tokens(masked)
        x = x.masked_fill((masked == alphabet.mask_idx).unsqueeze(-1), 0.0)
        x = x * (1 - 0.15 * 0.8) / (1 - len(pos) / tokens.shape[1])
        yield seq, tokens, pos, x.transpose(0, 1)


def _by_hand(loaded: LoadedModel, seqs: list[str], layer: int, zero: bool) -> float:
    """Token-weighted masked CE, one sequence at a time, running fair-esm's blocks ourselves."""
    model = loaded.model
    total, count = 0.0, 0
    with torch.inference_mode():
        for seq, tokens, pos, x in _masked_inputs(loaded, seqs):
            for k, block in enumerate(model.layers):
                if k == layer and zero:
                    x = x.clone()
                    x[1 : len(seq) + 1] = 0.0  # residues only; BOS/EOS stay
                x = block(x)[0]
            x = model.emb_layer_norm_after(x)
            if layer == loaded.num_layers and zero:
                x[1 : len(seq) + 1] = 0.0
            logits = model.lm_head(x.transpose(0, 1))[0]
            total += float(F.cross_entropy(logits[pos], tokens[0, pos], reduction="sum"))
            count += len(pos)
    return total / count


def test_masks_are_deterministic_and_sized() -> None:
    a = mask_positions(200, 0.15, seed=0, index=5)
    assert torch.equal(a, mask_positions(200, 0.15, seed=0, index=5))
    assert len(a) == 30 and len(set(a.tolist())) == 30 and int(a.max()) < 200
    assert not torch.equal(a, mask_positions(200, 0.15, seed=0, index=6))
    assert not torch.equal(a, mask_positions(200, 0.15, seed=1, index=5))


@pytest.mark.parametrize("layer", [2, 4])
def test_clean_and_zero_match_a_hand_written_forward(
    loaded: LoadedModel, held_out: list[str], layer: int
) -> None:
    clean = masked_lm_loss(loaded, held_out, layer, None, max_tokens_per_batch=1200)
    zero = masked_lm_loss(loaded, held_out, layer, torch.zeros_like, max_tokens_per_batch=1200)
    assert clean == pytest.approx(_by_hand(loaded, held_out, layer, zero=False), rel=1e-5)
    assert zero == pytest.approx(_by_hand(loaded, held_out, layer, zero=True), rel=1e-5)
    assert zero > clean + 0.1


def test_loss_recovered_identity_zero_and_mix(loaded: LoadedModel, held_out: list[str]) -> None:
    identity = loss_recovered(loaded, held_out, 2, lambda x: x)
    assert identity["ce_spliced"] == identity["ce_clean"]
    assert identity["loss_recovered"] == 1.0
    zero = loss_recovered(loaded, held_out, 2, torch.zeros_like)
    assert zero["loss_recovered"] == 0.0
    mix = loss_recovered(loaded, held_out, 2, lambda x: 0.5 * x)  # halfway to zero ablation
    assert mix["ce_clean"] == identity["ce_clean"] and mix["ce_zero"] == identity["ce_zero"]
    assert 0.0 < mix["loss_recovered"] < 1.0
    assert mix["ce_spliced"] != mix["ce_clean"]  # the hook really changed the logits


def test_hook_sees_only_this_layer_and_is_removed(loaded: LoadedModel, held_out: list[str]) -> None:
    seen: list[tuple[int, ...]] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x

    masked_lm_loss(loaded, held_out[:3], 1, record, max_tokens_per_batch=100_000)
    assert len(seen) == 1 and seen[0][0] == 3 and seen[0][2] == loaded.embed_dim
    assert not any(block._forward_pre_hooks for block in loaded.model.layers)
    assert not loaded.model.emb_layer_norm_after._forward_hooks
    with pytest.raises(ValueError, match=r"outside 0\.\.4"):
        masked_lm_loss(loaded, held_out, 5, None)


def _skipped_by_hand(loaded: LoadedModel, seqs: list[str], in_layer: int, out_layer: int) -> float:
    """Masked CE with blocks ``in_layer .. out_layer-1`` skipped at residue positions (BOS/EOS run
    them), one sequence at a time with fair-esm's own blocks: the transcoder's ablation."""
    model = loaded.model
    total, count = 0.0, 0
    with torch.inference_mode():
        for seq, tokens, pos, x in _masked_inputs(loaded, seqs):
            residues = slice(1, len(seq) + 1)
            for k, block in enumerate(model.layers):
                if k == in_layer:
                    x_in = x.clone()
                if k == out_layer:
                    x = x.clone()
                    x[residues] = x_in[residues]
                x = block(x)[0]
            x = model.emb_layer_norm_after(x)
            if out_layer == loaded.num_layers:
                x[residues] = model.emb_layer_norm_after(x_in)[residues]
            logits = model.lm_head(x.transpose(0, 1))[0]
            total += float(F.cross_entropy(logits[pos], tokens[0, pos], reduction="sum"))
            count += len(pos)
    return total / count


@pytest.mark.parametrize(("in_layer", "out_layer"), [(2, 3), (3, 4), (1, 3)])
def test_transcoder_splice_exact_blocks_and_skipped_blocks(
    loaded: LoadedModel, held_out: list[str], in_layer: int, out_layer: int
) -> None:
    """A "transcoder" that runs the true blocks recovers all of the loss, one that passes its
    input through recovers none, and the ablation equals a hand-written forward without them."""
    model = loaded.model
    held_out = [seq for seq in held_out if len(seq) > 160]  # two never share a batch of 310
    assert len(held_out) >= 5
    one = {"max_tokens_per_batch": 310}  # one protein per batch: no padding for the blocks

    def true_blocks(x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(0, 1)
        for block in model.layers[in_layer:out_layer]:
            h = block(h)[0]
        if out_layer == loaded.num_layers:  # not through the splice hook that LayerNorm carries
            h = model.emb_layer_norm_after.forward(h)
        return h.transpose(0, 1)

    exact = transcoder_loss_recovered(loaded, held_out, in_layer, out_layer, true_blocks, **one)
    assert exact["ce_spliced"] == pytest.approx(exact["ce_clean"], rel=1e-6)
    assert exact["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert exact["ce_zero"] > exact["ce_clean"] + 0.01  # the blocks matter
    assert exact["ce_zero"] == pytest.approx(
        _skipped_by_hand(loaded, held_out, in_layer, out_layer), rel=1e-5
    )

    def skipped(x: torch.Tensor) -> torch.Tensor:
        last = out_layer == loaded.num_layers
        return model.emb_layer_norm_after.forward(x) if last else x

    half = transcoder_loss_recovered(  # halfway between skipping and running the blocks
        loaded, held_out, in_layer, out_layer, lambda x: 0.5 * (skipped(x) + true_blocks(x)), **one
    )
    assert half["ce_clean"] == exact["ce_clean"] and half["ce_zero"] == exact["ce_zero"]
    assert half["ce_spliced"] not in (exact["ce_clean"], exact["ce_zero"])  # the prediction is used
    assert half["loss_recovered"] > 0.5  # half of the blocks' update is most of their worth
    assert not any(block._forward_pre_hooks for block in model.layers)
    assert not model.emb_layer_norm_after._forward_hooks


def test_transcoder_layers_are_checked(loaded: LoadedModel, held_out: list[str]) -> None:
    with pytest.raises(ValueError, match="deeper one"):
        transcoder_loss_recovered(loaded, held_out, 3, 3, lambda x: x)
    with pytest.raises(ValueError, match="source layer 4"):
        masked_lm_loss(loaded, held_out, 2, lambda x: x, source_layer=4)
