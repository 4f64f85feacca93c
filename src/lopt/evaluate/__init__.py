"""Evaluation against tuned hand-designed optimizers."""
