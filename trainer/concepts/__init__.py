"""Residue-level concept alignment (InterPLM's protocol) as a trainer stage.

``labels`` reads and splits the residue-annotation files, ``metrics`` scores every feature at
once, ``results`` writes the outputs, ``stage`` runs it all, ``neurons`` is the ESM2 neuron
baseline encoder.
"""

from trainer.concepts.stage import ConceptsConfig, run_concepts_stage

__all__ = ["ConceptsConfig", "run_concepts_stage"]
