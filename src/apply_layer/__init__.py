"""quantum-apply-layer: the execution gate of the quantum trading system."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("quantum-apply-layer")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
