"""Offline datasets: bundled, generated, or loaded from files the user provides."""
