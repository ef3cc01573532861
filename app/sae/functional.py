"""Free functions shared by every dictionary: normalisation, sparsifying activations, losses.

They work on plain tensors so each can be tested on tiny hand-made inputs, apart from the
modules and the training loop (the openai/sparse_autoencoder layout).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

LN_EPS = 1e-5


class NormStats(NamedTuple):
    """Per-sample statistics of the input LayerNorm: mean and std, each ``[B, 1]``."""

    mean: Tensor
    std: Tensor


class SparseCodes(NamedTuple):
    """A dictionary's answer for serving: the reconstruction and the latents as CSR.

    ``indptr [B+1]``, ``indices [nnz]``, ``values [nnz]`` are the CSR layout of the latents ``z
    [B, n]`` (row-major, latents ascending within a row, explicit zeros dropped): exactly what
    ``scipy.sparse.csr_matrix(z)`` holds, built where ``z`` lives so only non-zeros reach the host.
    """

    recon: Tensor  # [B, d_out] in raw units
    indptr: Tensor
    indices: Tensor
    values: Tensor


def csr_parts(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(indptr [B+1], indices [nnz], values [nnz])`` of ``z [B, n]``'s non-zeros, on its device.

    Row-major like ``scipy.sparse.csr_matrix(z)``; for dictionaries whose activation is dense."""
    rows, cols = z.nonzero(as_tuple=True)
    indptr = torch.zeros(z.shape[0] + 1, dtype=torch.long, device=z.device)
    torch.cumsum(torch.bincount(rows, minlength=z.shape[0]), 0, out=indptr[1:])
    return indptr, cols, z[rows, cols]


def topk_csr(pre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`topk_relu`'s latents as CSR parts (see :class:`SparseCodes`), never densified."""
    values, indices = pre.topk(k, dim=-1)
    indices, order = indices.sort(dim=-1)
    values = values.gather(-1, order).relu()
    keep = values > 0
    indptr = torch.zeros(pre.shape[0] + 1, dtype=torch.long, device=pre.device)
    torch.cumsum(keep.sum(dim=-1), 0, out=indptr[1:])
    return indptr, indices[keep], values[keep]


def layer_norm(x: Tensor, eps: float = LN_EPS) -> tuple[Tensor, NormStats]:
    """Per-sample LayerNorm without affine weights: ``(x - mean) / sqrt(var + eps)``.

    ``x [B, d]``. The variance is the *biased* one (divide by d) with eps inside the square root,
    as in the seed paper. The output is ``torch.nn.functional.layer_norm``'s own, bit for bit,
    so a user who applies it before an exported SAE gets our latents to the last bit (see
    :mod:`app.sae.saelens`: InterProt, OpenAI and SAELens divide by the unbiased std plus eps).
    """
    mean = x.mean(dim=-1, keepdim=True)
    std = torch.sqrt(x.var(dim=-1, unbiased=False, keepdim=True) + eps)
    return F.layer_norm(x, x.shape[-1:], eps=eps), NormStats(mean, std)


def topk_relu(pre: Tensor, k: int) -> Tensor:
    """Keep each row's ``k`` largest pre-activations, ReLU them, zero the rest. ``[B, n] -> [B, n]``."""
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def batch_topk_relu(pre: Tensor, k: int) -> Tensor:
    """BatchTopK: keep the ``k * B`` largest ReLU'd pre-activations across the whole batch.

    Per-sample L0 varies; the mean L0 over the batch is at most ``k``.
    """
    acts = pre.relu()
    flat = acts.flatten()
    n_keep = min(k * pre.shape[0], flat.numel())
    values, indices = flat.topk(n_keep)
    return torch.zeros_like(flat).scatter(-1, indices, values).view_as(pre)


def jump_relu(pre: Tensor, threshold: Tensor | float) -> Tensor:
    """Keep ReLU'd pre-activations strictly above ``threshold`` (BatchTopK at inference)."""
    acts = pre.relu()
    return acts * (acts > threshold)


def normalized_mse(recon: Tensor, target: Tensor) -> Tensor:
    """Sum of squared errors over the batch's total variance about its mean (OpenAI's loss).

    Equal to 1 − FVE on the batch; dividing the seed paper's raw MSE by a per-batch constant keeps
    Adam's steps unchanged in scale and makes loss coefficients independent of layer and model.
    """
    sst = (target - target.mean(dim=0, keepdim=True)).pow(2).sum()
    return (recon - target).pow(2).sum() / sst.clamp_min(1e-12)


def aux_k_loss(
    pre: Tensor, residual: Tensor, decoder: Tensor, dead: Tensor, k_aux: int, scale: Tensor
) -> Tensor:
    """AuxK: reconstruct the main residual with the top ``k_aux`` *dead* latents only.

    ``pre [B, n]`` encoder pre-activations, ``residual [B, d_out]`` = target − recon (detached by
    the caller), ``decoder [n, d_out]``, ``dead [n]`` bool, ``scale [B, 1]`` maps the decoder's
    (normalised) space to the target's. Weighted by min(#dead / k_aux, 1) as in the seed paper
    (the 1/32 coefficient is applied by the caller). Zero when no latent is dead.
    """
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    masked = pre.masked_fill(~dead, float("-inf"))
    z_aux = topk_relu(masked, min(k_aux, n_dead)).nan_to_num(0.0)
    aux_recon = (z_aux @ decoder) * scale
    return normalized_mse(aux_recon, residual) * min(n_dead / k_aux, 1.0)


def l1_penalty(z: Tensor, decoder: Tensor) -> Tensor:
    """InterPLM/Anthropic L1: mean over the batch of Σ_i z_i · ‖decoder_i‖₂. ``z [B, n]``, ``decoder [n, d]``."""
    return (z.abs() * decoder.norm(dim=-1)).sum(dim=-1).mean()


@torch.no_grad()
def normalise_rows_(weight: Tensor) -> Tensor:
    """Scale each row (a decoder direction) to unit L2 norm, in place."""
    weight.div_(weight.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return weight


@torch.no_grad()
def remove_parallel_grad_(weight: Tensor) -> None:
    """Project out of each decoder row's gradient its component along that (unit) row.

    With a unit-norm decoder that component only changes the norm, which renormalising undoes;
    removing it keeps Adam's moments from accumulating a useless direction (OpenAI, InterProt).
    """
    if weight.grad is None:
        return
    parallel = (weight.grad * weight).sum(dim=-1, keepdim=True)
    weight.grad.sub_(parallel * weight)


def fraction_variance_explained(recon: Tensor, target: Tensor) -> float:
    """1 − SSE / SST, with SST about the target's mean over all samples."""
    return 1.0 - float(normalized_mse(recon.double(), target.double()))


def sequence_fve(x: Tensor, recon: Tensor) -> float:
    """FVE of one sequence: 1 − SSE/SST, SST about its mean over residues (over dims if one row).

    The trainer records its distribution over the corpus and the server compares a pasted
    sequence against it, so both must use this one definition.
    """
    x64, r64 = x.double(), recon.double()
    centre = x64.mean(dim=0, keepdim=True) if x64.shape[0] > 1 else x64.mean(dim=1, keepdim=True)
    sst = float(((x64 - centre) ** 2).sum())
    return 1.0 - float(((x64 - r64) ** 2).sum()) / sst if sst > 0 else float("nan")
