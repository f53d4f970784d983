"""Training methods (U2PL building blocks live in u2pl_*.py)."""
