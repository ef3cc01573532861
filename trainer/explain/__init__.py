"""Claude explanations of features, scored by predicting held-out activations (seed protocol)."""
