"""Synthetic population and extracts for Haven (demo, tests, benchmarks)."""

from synth.generator import generate

__all__ = ["generate"]
