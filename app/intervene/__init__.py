"""Interventions on ESM2 through a dictionary: feature steering and variant effects.

Both split the language model at the dictionary's layer (:mod:`app.intervene.forward`): the
forward runs to that layer, the residual stream is edited through the dictionary, and the rest of
the model (blocks, final LayerNorm, LM head) runs on the edited stream.
"""
