"""Gradient estimators (PES, ES, truncated backprop), unrolls and the outer training loop."""
