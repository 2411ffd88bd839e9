"""IdentityTracker.observe: what counts as a change of server, and what as a
connection that moved (a split brain's other side; store/identity.py)."""

from __future__ import annotations

import pytest

from apply_layer.store.identity import IdentityTracker, ServerIdentity

pytestmark = pytest.mark.unit  # scripts/test.sh --fast

OLD = ServerIdentity("run-old", "repl-old", "master")
NEW = ServerIdentity("run-new", "repl-new", "master")


def tracker(clock_s: list[float]) -> tuple[IdentityTracker, list[int]]:
    calls: list[int] = []
    t = IdentityTracker(clock=lambda: clock_s[0])
    t.listeners.append(lambda: calls.append(int(clock_s[0])))
    return t, calls


def test_a_new_server_is_a_change_and_the_same_server_is_not() -> None:
    now = [100.0]
    t, calls = tracker(now)
    t.observe(OLD)
    assert (t.changed_at_ms, t.changes, calls) == (100_000, 0, [])  # first sighting
    now[0] = 200.0
    t.observe(OLD, was=OLD.key)  # a reconnect to the same server
    t.observe(OLD)  # a new connection to it
    assert (t.changed_at_ms, t.changes, calls) == (100_000, 0, [])
    now[0] = 300.0
    t.observe(NEW, was=OLD.key)
    assert (t.changed_at_ms, t.changes, calls) == (300_000, 1, [300])


def test_a_connection_that_moved_to_the_server_already_followed_counts_for_its_writes() -> None:
    """Split brain: the process follows NEW, but one pooled connection was still on OLD
    and wrote there. When it reconnects to NEW, those writes may be lost: results are
    written again (listeners) and the lookups' moment moves, with no change counted."""
    now = [100.0]
    t, calls = tracker(now)
    t.observe(OLD)
    now[0] = 200.0
    t.observe(NEW, was=OLD.key)  # the first connection to follow the failover
    now[0] = 205.0
    t.observe(NEW, was=OLD.key)  # the straggler that wrote to OLD meanwhile
    assert (t.changed_at_ms, t.changes, calls) == (205_000, 1, [200, 205])
    now[0] = 210.0
    t.observe(NEW)  # a connection made afresh: nothing to say
    t.observe(NEW, was=NEW.key)
    assert (t.changed_at_ms, t.changes, calls) == (205_000, 1, [200, 205])
