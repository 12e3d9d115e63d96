"""Planted: fails at import, as a half-finished family would."""

raise ImportError("planted: this family's dependency is missing")
