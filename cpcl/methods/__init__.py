"""Method modules: one per semi-supervised method (UniMatch building blocks for now)."""
