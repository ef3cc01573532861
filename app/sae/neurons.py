"""The baseline: a layer's raw ESM2 neurons, presented with the same API as a dictionary.

Seed paper (``--embedding_relu 1``): a neuron's activation is the raw dimension clipped at 0, so
every later stage (analysis, GO, explanations) treats neurons exactly like SAE latents.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from app.sae.functional import SparseCodes, csr_parts


class NeuronBasis(nn.Module):
    """Latent i = ReLU(x_i); ``n_latents = d_in``; no parameters, no normalisation.

    ``decode`` is the identity on the positive part: it returns ReLU(x), *not* a reconstruction
    of x (the negative half is lost), so FVE and loss recovered are not defined for neurons.
    """

    kind: ClassVar[str] = "neurons"
    anchor: Tensor

    def __init__(self, d_in: int) -> None:
        super().__init__()
        self.d_in = self.d_out = self.n_latents = d_in
        self.normalisation = "none"
        self.is_transcoder = False
        # No weights, but ``.to(device)`` must still place it (analysis on a GPU finds a
        # module's device from its tensors): an empty buffer, not saved with the state.
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def pre_activations(self, x: Tensor) -> Tensor:
        """The raw neurons. ``[B, d] -> [B, d]``."""
        return x

    def encode(self, x: Tensor) -> Tensor:
        """``ReLU(x)``. ``[B, d] -> [B, d]``."""
        return x.relu()

    def decode(self, z: Tensor) -> Tensor:
        """Identity on the positive part (not a reconstruction)."""
        return z

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encode(x)
        return z, z

    @torch.no_grad()
    def forward_sparse(self, x: Tensor) -> SparseCodes:
        """:meth:`forward` with the non-zeros laid out as CSR (the serving path)."""
        z = self.encode(x)
        return SparseCodes(z, *csr_parts(z))

    def decoder_directions(self) -> Tensor:
        """The standard basis ``[d, d]``."""
        return torch.eye(self.d_in, device=self.anchor.device)

    @torch.no_grad()
    def residue_attribution(
        self, residue_vectors: Tensor, include_bias: bool = True, lengths: Tensor | None = None
    ) -> Tensor:
        """Pooled neuron = mean of residue values, so residue l contributes r_l / L exactly.

        ``lengths [P]``: the rows are P proteins back to back, each divided by its own length.
        """
        if lengths is None:
            return residue_vectors / residue_vectors.shape[0]
        n_res = torch.repeat_interleave(lengths, lengths).to(residue_vectors.dtype)
        return residue_vectors / n_res[:, None]

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "n_latents": self.n_latents,
            "normalisation": "none",
            "activation": "relu (raw neurons clipped at 0)",
        }
