"""IdentityTracker.observe: what counts as a change of server, and what as a
connection that moved (a split brain's other side; store/identity.py)."""

from __future__ import annotations

import math

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


def test_a_connection_idle_through_the_change_comes_back_without_counting() -> None:
    """A restarted Redis: the pool's idle connections reconnect one by one as they are
    next handed out. Each reached the old server before, but came back to its pool
    before the process moved on: it wrote nothing since, so nothing is held again."""
    now = [100.0]
    t, calls = tracker(now)
    t.observe(OLD)
    returned = 1.0  # a monotonic moment, before any change
    now[0] = 200.0
    t.observe(NEW, was=OLD.key, used_at=returned)
    assert t.left_at is not None and t.left_at > returned
    for second in (205.0, 230.0, 290.0):  # the stragglers, as the pool hands them out
        now[0] = second
        t.observe(NEW, was=OLD.key, used_at=returned)
    assert (t.changed_at_ms, t.changes, calls) == (200_000, 1, [200])


@pytest.mark.parametrize("used", ["handed out", "came back after the change", "not stamped"])
def test_a_connection_that_may_have_written_after_the_change_still_counts(used: str) -> None:
    now = [100.0]
    t, calls = tracker(now)
    t.observe(OLD)
    now[0] = 200.0
    t.observe(NEW, was=OLD.key)
    assert t.left_at is not None
    used_at = {
        "handed out": math.inf,  # a blocking read, the watcher's, the lane's
        "came back after the change": t.left_at + 0.5,
        "not stamped": None,
    }[used]
    now[0] = 205.0
    t.observe(NEW, was=OLD.key, used_at=used_at)
    assert (t.changed_at_ms, t.changes, calls) == (205_000, 1, [200, 205])


def test_the_moment_left_is_that_of_the_last_change_of_server() -> None:
    """A connection used on OLD after the move to NEW, back in the pool before NEW gave
    way to a third server, reconnects there: the third change is later than anything
    it wrote, so it does not count again."""
    third = ServerIdentity("run-3", "repl-3", "master")
    now = [100.0]
    t, calls = tracker(now)
    t.observe(OLD)
    now[0] = 200.0
    t.observe(NEW)
    first_left = t.left_at
    now[0] = 300.0
    t.observe(third)
    assert first_left is not None and t.left_at is not None and t.left_at > first_left
    used_on_old = (first_left + t.left_at) / 2  # came back between the two changes
    now[0] = 310.0
    t.observe(third, was=OLD.key, used_at=used_on_old)
    assert (t.changed_at_ms, t.changes, calls) == (300_000, 2, [200, 300])
