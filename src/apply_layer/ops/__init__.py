"""What operators' commands ask of a deployment, beside the daemon.

Where Redis runs and how healthy it is (``topology``), which permissions an
ACL user lacks (``acl_probes``), and a private ``redis-server`` for the demo,
the benchmarks and the tests (``embedded_redis``). Used by the commands; the
daemon does not import it (import-linter contract ``layers``).
"""
