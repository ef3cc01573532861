"""The dictionaries: TopK, BatchTopK and ReLU+L1 SAEs, transcoders, and the raw-neuron baseline.

Every trained dictionary is one :class:`SparseDictionary`: per-sample LayerNorm, a linear encoder,
a sparsifying activation (a small module that plugs in), a linear decoder with unit-norm rows::

    x̂ = LN(x) − b_dec                      (pre-bias; SAEs only, not transcoders)
    z = act(x̂ · W_enc + b_enc)             W_enc [d_in, n], act = TopK | BatchTopK | ReLU
    y = (z · W_dec + b_dec) · σ(x) + μ(x)  W_dec [n, d_out]; un-normalised for SAEs only

Shapes: ``x [B, d_in]``, ``z [B, n_latents]``, ``y [B, d_out]``. All are pure torch (the server
encodes with them), and their losses are the free functions of :mod:`app.sae.functional`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from app.sae.functional import (
    LN_EPS,
    NormStats,
    SparseCodes,
    aux_k_loss,
    batch_topk_relu,
    csr_parts,
    jump_relu,
    l1_penalty,
    layer_norm,
    normalise_rows_,
    normalized_mse,
    remove_parallel_grad_,
    topk_csr,
    topk_relu,
)

NORMALISATIONS = ("layer_norm", "none")
AUX_COEFFICIENT = 1 / 32
# forward_sparse multiplies a CSR tensor, the product torch.sparse documents for CPU and CUDA;
# torch labels that API beta on first use, which is no news to a server log.
warnings.filterwarnings(
    "ignore", message="Sparse CSR tensor support is in beta", category=UserWarning
)


class Activation(nn.Module):
    """A sparsifying non-linearity ``[B, n] -> [B, n]``; :meth:`sparse` gives its CSR parts."""

    def sparse(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(indptr, indices, values)`` of ``self(pre)`` (see :class:`SparseCodes`)."""
        return csr_parts(self(pre))


class TopK(Activation):
    """Keep each sample's k largest pre-activations (ReLU'd)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, pre: Tensor) -> Tensor:
        return topk_relu(pre, self.k)

    def sparse(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return topk_csr(pre, self.k)  # straight from topk's indices: no dense [B, n] at all


class BatchTopK(Activation):
    """Top k×B across the batch while training; a learned global threshold at inference.

    The threshold is an EMA of the smallest positive training activation (Bussmann et al.); it is
    negative until the trainer first sets it, and until then inference falls back to BatchTopK.
    """

    threshold: Tensor

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.register_buffer("threshold", torch.tensor(-1.0))

    def forward(self, pre: Tensor) -> Tensor:
        if self.training or float(self.threshold) < 0:
            return batch_topk_relu(pre, self.k)
        return jump_relu(pre, self.threshold)

    @torch.no_grad()
    def update_threshold(self, z: Tensor, beta: float = 0.999) -> None:
        """Fold the smallest positive activation of a training batch into the EMA.

        Written without reading values back to the host, so a GPU step never waits on it.
        """
        low = torch.where(z > 0, z, torch.inf).min()
        ema = self.threshold * beta + (1 - beta) * low
        new = torch.where(self.threshold < 0, low, ema)
        self.threshold.copy_(torch.where(torch.isinf(low), self.threshold, new))

    @torch.no_grad()
    def scale_(self, factor: float) -> None:
        """Scale the learned threshold with the pre-activations (see ``scale_output_``)."""
        if float(self.threshold) >= 0:
            self.threshold.mul_(factor)


class ReLU(Activation):
    """Plain ReLU; sparsity comes from the L1 penalty in the loss (InterPLM)."""

    def forward(self, pre: Tensor) -> Tensor:
        return pre.relu()


def make_activation(encoder_kind: str, k: int | None) -> Activation:
    """The activation module for ``topk`` | ``batchtopk`` | ``relu_l1``."""
    if encoder_kind == "relu_l1":
        return ReLU()
    if k is None or k < 1:
        raise ValueError(f"{encoder_kind} needs k >= 1, got {k}")
    if encoder_kind == "topk":
        return TopK(k)
    if encoder_kind == "batchtopk":
        return BatchTopK(k)
    raise ValueError(f"unknown encoder kind {encoder_kind!r} (topk, batchtopk, relu_l1)")


class SparseDictionary(nn.Module):
    """Shared body of every trained dictionary (see the module docstring for the maths)."""

    kind: ClassVar[str] = "sparse"

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        *,
        encoder_kind: str,
        d_out: int | None = None,
        k: int | None = None,
        l1_coefficient: float = 0.0,
        normalisation: str = "layer_norm",
        aux_k: int | None = None,
        is_transcoder: bool = False,
    ) -> None:
        super().__init__()
        if normalisation not in NORMALISATIONS:
            raise ValueError(
                f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}"
            )
        d_out = d_in if d_out is None else d_out
        self.d_in, self.d_out, self.n_latents = d_in, d_out, n_latents
        self.encoder_kind, self.k, self.l1_coefficient = encoder_kind, k, l1_coefficient
        self.normalisation, self.is_transcoder = normalisation, is_transcoder
        # k_aux = d_in / 2 (seed paper, OpenAI); ReLU+L1 has no dead-latent loss.
        self.aux_k = (aux_k or d_in // 2) if encoder_kind != "relu_l1" else None
        self.activation = make_activation(encoder_kind, k)
        # nn.Linear's default (Kaiming-uniform) init; the decoder starts as its transpose, unit-norm.
        bound = 1 / math.sqrt(d_in)
        self.W_enc = nn.Parameter(torch.empty(d_in, n_latents).uniform_(-bound, bound))
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        w_dec = self.W_enc.detach().t().clone()
        if d_out != d_in:
            w_dec = torch.empty(n_latents, d_out).uniform_(-bound, bound)
        self.W_dec = nn.Parameter(normalise_rows_(w_dec))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        # Transcoders while training: the encoder sees (LN(x) − in_shift) / in_scale (see
        # ``standardise_input``); folded into W_enc/b_enc before saving, so never persisted.
        self.in_shift: Tensor
        self.in_scale: Tensor
        self.register_buffer("in_shift", torch.zeros(d_in), persistent=False)
        self.register_buffer("in_scale", torch.ones(()), persistent=False)

    # SAEs subtract b_dec from the input and undo the LayerNorm on the output; transcoders map
    # into another space, so they do neither (seed paper: output not un-normalised).
    @property
    def pre_bias(self) -> bool:
        return not self.is_transcoder

    def normalise(self, x: Tensor) -> tuple[Tensor, NormStats]:
        """``x [B, d_in]`` -> (normalised input, per-sample mean/std)."""
        if self.normalisation == "layer_norm":
            return layer_norm(x, LN_EPS)
        return x, NormStats(x.new_zeros(x.shape[0], 1), x.new_ones(x.shape[0], 1))

    def _pre(self, x_n: Tensor) -> Tensor:
        if self.pre_bias:
            x_n = x_n - self.b_dec
        elif self._standardising:
            x_n = (x_n - self.in_shift) / self.in_scale
        pre = x_n @ self.W_enc
        if torch.is_grad_enabled() or pre.dtype != self.b_enc.dtype:
            return pre + self.b_enc
        return pre.add_(self.b_enc)  # same numbers, one [B, n] buffer fewer (inference only)

    _standardising = False

    @torch.no_grad()
    def standardise_input(self, shift: Tensor, scale: float) -> None:
        """Transcoders, for training: encode (LN(x) − shift) / scale instead of LN(x).

        Pooled LN'd vectors are nearly one common direction (norm ~√d) plus small deviations;
        a transcoder has no pre-bias to remove it, so each latent would be on or off for every
        protein at once. ``fold_standardisation_`` turns this back into plain weights."""
        if not self.is_transcoder:
            raise ValueError("standardise_input is for transcoders (SAEs have a pre-bias)")
        self.in_shift.copy_(shift)
        self.in_scale.fill_(scale)
        self._standardising = True

    @torch.no_grad()
    def fold_standardisation_(self, output_scale: float = 1.0) -> None:
        """Fold the input standardisation into W_enc/b_enc and multiply the output by
        ``output_scale`` (see ``scale_output_``): the same function, as plain weights."""
        if self._standardising:
            self.W_enc.div_(self.in_scale)
            self.b_enc.sub_(self.in_shift @ self.W_enc)
            self.in_shift.zero_()
            self.in_scale.fill_(1.0)
            self._standardising = False
        if output_scale != 1.0:
            self.scale_output_(output_scale)

    def pre_activations(self, x: Tensor) -> Tensor:
        """Linear pre-activations before the sparsifying non-linearity. ``[B, d_in] -> [B, n]``."""
        return self._pre(self.normalise(x)[0])

    def encode(self, x: Tensor) -> Tensor:
        """Latents, non-negative and sparse. ``[B, d_in] -> [B, n_latents]``."""
        return self.activation(self.pre_activations(x))

    def decode(self, z: Tensor, stats: NormStats | None = None) -> Tensor:
        """``[B, n] -> [B, d_out]``; for SAEs in LayerNorm space unless ``stats`` are given."""
        out = z @ self.W_dec + self.b_dec
        if stats is not None and not self.is_transcoder:
            out = out * stats.std + stats.mean
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, d_in]`` -> (reconstruction/prediction ``[B, d_out]`` in raw units, latents)."""
        x_n, stats = self.normalise(x)
        z = self.activation(self._pre(x_n))
        return self.decode(z, stats), z

    @torch.no_grad()
    def forward_sparse(self, x: Tensor) -> SparseCodes:
        """:meth:`forward` for serving: the same latents, never densified, and a sparse decode
        (a CSR product reads only the active latents' decoder rows, k of n per residue).

        The reconstruction equals ``forward``'s up to float rounding (sums in another order).
        """
        x_n, stats = self.normalise(x)
        indptr, indices, values = self.activation.sparse(self._pre(x_n))
        shape = (x.shape[0], self.n_latents)
        z = torch.sparse_csr_tensor(
            indptr, indices, values.to(self.W_dec.dtype), size=shape, check_invariants=True
        )
        out = z @ self.W_dec + self.b_dec
        if not self.is_transcoder:
            out = out * stats.std + stats.mean
        return SparseCodes(out, indptr, indices, values)

    def training_loss(
        self, x: Tensor, target: Tensor, dead: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Normalised MSE (+ L1 weighted by decoder norms) (+ 1/32·AuxK on ``dead [n]`` latents)."""
        x_n, stats = self.normalise(x)
        pre = self._pre(x_n)
        z = self.activation(pre)
        recon = self.decode(z, stats)
        mse = normalized_mse(recon, target)
        loss = mse
        parts = {"nmse": mse.detach()}  # tensors: no host sync per step (float() them to log)
        if self.l1_coefficient > 0:
            l1 = l1_penalty(z, self.W_dec)
            loss = loss + self.l1_coefficient * l1
            parts["l1"] = l1.detach()
        if self.aux_k is not None and dead is not None and bool(dead.any()):
            # Transcoders: the decoder's space is the target's (the trainer scales the target).
            scale = stats.std if not self.is_transcoder else torch.ones_like(stats.std)
            residual = (target - recon).detach()
            aux = aux_k_loss(pre, residual, self.W_dec, dead, self.aux_k, scale)
            loss = loss + AUX_COEFFICIENT * aux
            parts["aux"] = aux.detach()
        return loss, parts, z

    @torch.no_grad()
    def scale_output_(self, factor: float) -> None:
        """Multiply a transcoder's output by ``factor`` > 0, in place, without changing which
        latents fire: the latents scale by ``factor`` (W_enc, b_enc, a BatchTopK threshold) and
        so does b_dec. TopK, BatchTopK and ReLU commute with a positive scale. Not for SAEs,
        whose pre-bias feeds b_dec back into the encoder."""
        if not self.is_transcoder or factor <= 0:
            raise ValueError("scale_output_ needs a transcoder and a positive factor")
        for p in (self.W_enc, self.b_enc, self.b_dec):
            p.mul_(factor)
        if isinstance(self.activation, BatchTopK):
            self.activation.scale_(factor)

    def constrain_gradients(self) -> None:
        """Before the optimiser step: drop the decoder-parallel gradient."""
        remove_parallel_grad_(self.W_dec)

    def constrain_weights(self) -> None:
        """After the optimiser step: decoder rows back to unit norm."""
        normalise_rows_(self.W_dec.data)

    def decoder_directions(self) -> Tensor:
        """Each latent's output direction ``[n_latents, d_out]`` (for cosine neighbours)."""
        return self.W_dec.detach()

    @torch.no_grad()
    def residue_attribution(
        self, residue_vectors: Tensor, include_bias: bool = True, lengths: Tensor | None = None
    ) -> Tensor:
        """Exact split of the *pooled* pre-activation into per-residue terms. ``[L, d] -> [L, n]``.

        The pooled input is p = mean_l r_l. Under p's own LayerNorm statistics (mean μ(p), std σ(p)
        — scalars for this sample) the LN is linear: LN(p) = C p / σ(p) with C the centring
        matrix, and C p = mean_l C r_l. So pre(p) = Σ_l (C r_l)·W_enc / (L σ(p)) + (b_enc − b_dec·W_enc),
        exactly; the constant is shared equally (1/L per residue) when ``include_bias``. Only
        σ(p) couples the residues, which is why a residue's term is not its own pre-activation.
        ``lengths [P]``: the rows are P proteins back to back, each attributed on its own.
        """
        if lengths is None:
            lengths = torch.tensor([residue_vectors.shape[0]], device=residue_vectors.device)
        owner = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
        n_res = lengths.to(residue_vectors.dtype)[:, None]  # [P, 1]
        pooled = torch.zeros(
            len(lengths),
            residue_vectors.shape[1],
            dtype=residue_vectors.dtype,
            device=residue_vectors.device,
        ).index_add_(0, owner, residue_vectors)
        _, stats = self.normalise(pooled / n_res)  # fmt: skip
        if self.normalisation == "layer_norm":
            centred = residue_vectors - residue_vectors.mean(dim=-1, keepdim=True)
            terms = (centred / (n_res * stats.std)[owner]) @ self.W_enc
        else:
            terms = (residue_vectors / n_res[owner]) @ self.W_enc
        if include_bias:
            bias = self.b_enc - (self.b_dec @ self.W_enc if self.pre_bias else 0.0)
            terms = terms + (bias / n_res)[owner]
        return terms

    def config(self) -> dict[str, Any]:
        """Everything :func:`build_dictionary` needs to rebuild this module."""
        return {
            "kind": self.kind,
            "encoder_kind": self.encoder_kind,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "n_latents": self.n_latents,
            "k": self.k,
            "l1_coefficient": self.l1_coefficient,
            "normalisation": self.normalisation,
            "ln_variance": "biased",
            "ln_eps": LN_EPS,
            "aux_k": self.aux_k,
            "aux_coefficient": AUX_COEFFICIENT if self.aux_k is not None else None,
            "pre_bias": self.pre_bias,
            "unnormalise_output": not self.is_transcoder,
            "unit_norm_decoder": True,
        }


class TopKSAE(SparseDictionary):
    """TopK SAE with AuxK (seed paper: k=64 protein level, k=16 residue level)."""

    kind = "topk"

    def __init__(self, d_in: int, n_latents: int, k: int, **kw: Any) -> None:
        super().__init__(d_in, n_latents, encoder_kind="topk", k=k, **kw)


class BatchTopKSAE(SparseDictionary):
    """BatchTopK SAE: k is the mean L0 over a training batch; a global threshold at inference."""

    kind = "batchtopk"

    def __init__(self, d_in: int, n_latents: int, k: int, **kw: Any) -> None:
        super().__init__(d_in, n_latents, encoder_kind="batchtopk", k=k, **kw)


class ReluL1SAE(SparseDictionary):
    """ReLU SAE with an L1 penalty weighted by decoder norms (InterPLM's standard SAE)."""

    kind = "relu_l1"

    def __init__(self, d_in: int, n_latents: int, l1_coefficient: float, **kw: Any) -> None:
        super().__init__(
            d_in, n_latents, encoder_kind="relu_l1", l1_coefficient=l1_coefficient, **kw
        )


class Transcoder(SparseDictionary):
    """Predicts another target from the input: pooled L -> pooled(L+1) − pooled(L), or residue
    L -> L+1. Input LayerNorm'd, output in the target's raw units, no pre-bias (seed paper)."""

    kind = "transcoder"

    def __init__(
        self, d_in: int, n_latents: int, d_out: int, encoder_kind: str = "topk", **kw: Any
    ) -> None:
        super().__init__(
            d_in, n_latents, encoder_kind=encoder_kind, d_out=d_out, is_transcoder=True, **kw
        )
