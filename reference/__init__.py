"""Reference implementations of ML engineering techniques, one folder per family.

Technique modules import torch and friends, never `suite`: copy one into your project.
The glue to the harness lives in each family's `scenarios.py` and `conformance.py`.
"""
