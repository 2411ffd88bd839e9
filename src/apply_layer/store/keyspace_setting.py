"""The server's ``notify-keyspace-events`` setting: what the gate needs of it.

Read by the keyspace watcher (``keyspace.py``: detect, enable, re-check)
and by ``apply-layer check``, which reports whether a server publishes
what the gate needs.
"""

from __future__ import annotations

# Event classes we need: K (keyspace channel), $ (string writes), h (hash writes).
# Not g: DEL and EXPIRE events would double the traffic and never wake anyone.
REQUIRED_CLASSES = "K$h"


def covers(flags: str, needed: str = REQUIRED_CLASSES) -> bool:
    """Whether a ``notify-keyspace-events`` value publishes every class in ``needed``."""
    expanded = flags.replace("A", "g$lshzxetd")
    return all(c in expanded for c in needed)


def merged_flags(flags: str, needed: str = REQUIRED_CLASSES) -> str:
    """``flags`` plus whatever of ``needed`` it lacks, keeping what others rely on."""
    return flags + "".join(c for c in needed if not covers(flags, c))
