"""The daemon (``apply-layer run``): the long-running service around the gate.

The intake loop and its tasks (``service``), what runs between reads
(``housekeeping``), one stream entry to one published ending (``processing``),
the permit signature policy, the signing key file, sd_notify and the metrics
endpoint. It drives the Redis shell and an executor; only the commands import
it (import-linter contract ``layers``). docs/ARCHITECTURE.md draws the layers.
"""
