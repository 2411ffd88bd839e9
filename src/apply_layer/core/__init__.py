"""The pure core: what the service decides, with no I/O.

Plans parsed from stream entries, permit verdicts, the gate's decision order,
sizing, the lifecycle's rules, outcomes and statuses, signed permits, client
order ids, the ``[PERMIT_WAIT]`` line and what such lines add up to, every key
name and every exception. Nothing here touches Redis, the network, a file, the
environment or the logging setup; the time is an argument. The import-linter
contract ``pure-core`` (pyproject.toml) and tests/core/test_pure_core.py keep
it so. docs/ARCHITECTURE.md draws the layers.
"""
