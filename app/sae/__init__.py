"""Sparse dictionaries over ESM2 activations: SAEs, transcoders and the raw-neuron baseline.

Pure torch (no fair-esm): the server encodes with these. See :mod:`app.sae.models` for the maths.
"""

from app.sae.functional import fraction_variance_explained, layer_norm, sequence_fve
from app.sae.io import (
    Dictionary,
    Provenance,
    build_dictionary,
    load_dictionary,
    read_config,
    read_provenance,
    save_dictionary,
    sha256_file,
)
from app.sae.models import (
    BatchTopKSAE,
    ReluL1SAE,
    SparseDictionary,
    TopKSAE,
    Transcoder,
)
from app.sae.neurons import NeuronBasis
from app.sae.saelens import export_saelens
from app.sae.splice import residue_reconstructor, transcoder_predictor

__all__ = [
    "BatchTopKSAE",
    "Dictionary",
    "NeuronBasis",
    "Provenance",
    "ReluL1SAE",
    "SparseDictionary",
    "TopKSAE",
    "Transcoder",
    "build_dictionary",
    "export_saelens",
    "fraction_variance_explained",
    "layer_norm",
    "load_dictionary",
    "read_config",
    "read_provenance",
    "residue_reconstructor",
    "save_dictionary",
    "sequence_fve",
    "sha256_file",
    "transcoder_predictor",
]
