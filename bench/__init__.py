"""Benchmarks of the apply layer, each on its own private ``redis-server``.

Run from the repository root (``bench`` and ``tests`` are packages there;
the benchmarks share the tests' daemon driver and helpers, ``tests.harness``):

    .venv/bin/python -m bench [--quick | --tiny] [--only N,...] [--json out.json]
    .venv/bin/python -m bench.<module> --help     # the stand-alone ones below

``python -m bench`` (``__main__``) prints one table comparing the project
with the old behaviour (polling, one plan at a time) and the seed's gate;
docs/PERFORMANCE.md explains the columns and records a full run. Its
scenarios:

* ``latency``: 1 reaction (last permit written -> the gate's decision) and
  2 denial (a deny written -> BLOCK), the gates of ``gates`` in this process;
  the permits written here, or (1, "P3.3 apart") by ``p33_writer`` in a
  process of its own, as the deployment's P3.3 writes them;
* ``e2e``: 3 end-to-end throughput through real daemons, permits 50-300 ms
  after each plan;
* ``present``: 4 throughput with permits already there, Redis commands
  and round trips per plan, and ``redis-benchmark`` of gate.lua;
* ``soak``: 5 the daemon's RSS and Redis memory over a long run, and
  6 an idle daemon's CPU.

What they stand on: ``context`` (sizes: full, ``--quick``, ``--tiny``; the
run's context), ``load`` (the daemon as a subprocess and the load generator
playing the upstream services), ``measure`` (percentiles, /proc, Redis
INFO), ``report`` (the table), ``profiling`` (py-spy, ``--profile``).

Stand-alone measurements, each ``python -m bench.<module>``:

* ``script_calls``: CPU per script call, redis-py against ``ScriptBatcher``;
* ``reaction_parts``: where a one-at-a-time reaction's time goes;
* ``reaction_floor``: the same reaction with every layer taken out (raw
  sockets, the gate's call written from the socket's callback): a floor;
* ``order_lookup``: what the lookup before a first send costs per order
  (testnet executor, the tests' fake Binance);
* ``wait_replicas``: what ``APPLY_REDIS_WAIT_REPLICAS`` costs per send record.
* ``permit_stall``: how long a hostile (400 MB, 2-million-field) permit holds
  Redis while the gate refuses it (docs/SECURITY.md).
"""
