"""The Redis shell: everything the service reads from and writes to Redis.

The gate's wait loop and its script, the plan journal, the symbol lease, the
published results and their corrections, keyspace wake-ups, pipelining of the
hot path's scripts, bounded stream reads (the command, the reply's
parse, the read's deadline), the one connection factory, the
server identity that notices lost writes, and the Lua function library
(``lua/``). It imports the pure core, never the daemon, the commands or an
executor (import-linter contract ``layers``). docs/ARCHITECTURE.md draws the
layers.
"""
