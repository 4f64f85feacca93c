"""Stability analysis: state-space forms, Lyapunov noise, linearization of learned optimizers."""
