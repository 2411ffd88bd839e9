"""quantum-apply-layer: the execution gate of the quantum trading system.

A plan read from Redis passes two permits (the governor's and P3.3's) in
one atomic step, or is blocked; only then is one reduce-only close placed,
exactly once.

The folders are the layers: ``core/`` (pure), ``store/`` (Redis),
``executors/`` (the exchange), ``daemon/``, ``ops/``, ``commands/``; beside
them the one settings object, the one logging setup and the metrics.
docs/ARCHITECTURE.md draws them and follows one plan through the modules;
pyproject.toml's import-linter contracts keep them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("quantum-apply-layer")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
