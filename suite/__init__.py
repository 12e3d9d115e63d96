"""mlsuite harness: registry, runner, measurement, schema, compare/gate and report.

Knows nothing about any one technique: scenarios are found through the registry.
"""

__version__ = "0.1.0"
