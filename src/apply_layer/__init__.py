"""quantum-apply-layer: the execution gate of the quantum trading system.

A plan read from Redis passes two permits (the governor's and P3.3's) in
one atomic step, or is blocked; only then is one reduce-only close placed,
exactly once. docs/ARCHITECTURE.md follows one plan through these modules.

The module map, by layer. A layer imports only those below it; the pure
core imports nothing but the standard library and itself (tests/unit/test_pure_core.py)::

    commands/          apply-layer <command>; one module per subcommand
      __init__            the dispatcher: settings, logging, exit statuses
      run check permits stats dedupe_clear demo smoke sign_permit
    __main__           python -m apply_layer

    service            the daemon: intake loop, tasks, outages, signals
    housekeeping       heartbeat, pending export, XAUTOCLAIM, idle consumers
    processing         one entry to one published ending (the lifecycle's I/O)
    permit_signatures  which issuers must sign, and what a bad signature does

    Redis shell
      gate             wait_and_consume_permits (lua/gate.lua): the wait loop
      journal          where a plan stands; claim, send record, the record read once
      results          the one publish: result entry, final state, ack, lease release
      lease            one execution per symbol; its fence and release
      lua/             every script, one .lua file each, KEYS/ARGV in a header
      keyspace         keyspace notifications that wake the gate's waiters
      batching         the hot path's scripts pipelined per event-loop turn
      stream_reader    bounded reads of the plan stream
      redis_client     the one connection factory (URL or Sentinel)
      redis_identity   notices a Redis that lost writes
      republish        writes recent results again after such a loss
      redis_acl, topology   what `check` asks Redis about
    Exchange shell
      executors/       base (the protocol), in_process, paper, dry_run, binance/
      executors/binance/   model (pure), client, market, lookup, close_size,
                           adoption, send, outcome, executor

    Pure core (no I/O)
      plans            a stream entry becomes a Plan or InvalidPlan
      permits          a stored permit is allow, deny or missing: the grant
                       and quantity rules, once
      decision         the gate's decision order and reasons; its defaults
      sizing           how much to close, rounded down to the lot step
      lifecycle        screening, stale authorisation, step result to outcome
      outcomes         Outcome, StepResult and the result entry's fields
      statuses         every status and state, a documented StrEnum each
      signing          signed permits: canonical text, HMAC, the key ring
      stats            what the [PERMIT_WAIT] lines say
      log_format       the [PERMIT_WAIT] line's format; escaping log values
      keys             every Redis key and stream name
      order_ids        a plan step's client order id (codes from plans)
      errors           every exception class, and the tree of all of them
      checks           CheckLine, one line of `apply-layer check`

    Used everywhere: settings (the one settings object), logs (the one
    logging setup), metrics, systemd (sd_notify), caller_tokens,
    signing_keys (the issuers' key file),
    embedded_redis (a private redis-server for the demo and the tests).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("quantum-apply-layer")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
