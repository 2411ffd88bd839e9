"""The daemon (``apply-layer run``): the long-running service around the gate.

The wiring and the intake loop (``service``), one task per entry read
(``entry_tasks``), one line per Redis outage (``redis_health``), what runs
between reads (``housekeeping``), one stream entry to one published ending
(``processing``), a claimed plan to its outcome under the symbol's lease
(``order_path``), the permit signature policy, the signing key file,
sd_notify and the metrics endpoint. It drives the Redis shell and an
executor; only the commands import it (import-linter contract ``layers``).
docs/ARCHITECTURE.md draws the layers.
"""
