"""The waiter registry the keyspace watcher and the gate's lane share (store/waiters.py)."""

from __future__ import annotations

import pytest

from apply_layer.store.waiters import registered

pytestmark = pytest.mark.unit


def test_a_waiter_is_under_each_of_its_keys_for_the_block_only() -> None:
    waiters: dict[str, set[str]] = {}
    with registered(waiters, ["a", "b"], "w1") as got:
        assert got == "w1"
        assert waiters == {"a": {"w1"}, "b": {"w1"}}
        with registered(waiters, ["b", "c"], "w2"):
            assert waiters == {"a": {"w1"}, "b": {"w1", "w2"}, "c": {"w2"}}
        assert waiters == {"a": {"w1"}, "b": {"w1"}}
    assert waiters == {}  # no empty set left behind: one key per plan would pile up


def test_a_block_that_raises_leaves_nothing_registered() -> None:
    waiters: dict[str, set[str]] = {"a": {"other"}}
    with pytest.raises(RuntimeError), registered(waiters, ("a", "b"), "w"):
        raise RuntimeError("the wait failed")
    assert waiters == {"a": {"other"}}


def test_keys_given_as_a_generator_are_all_removed() -> None:
    waiters: dict[str, set[int]] = {}
    with registered(waiters, (k for k in ["x", "y"]), 7):
        assert set(waiters) == {"x", "y"}
    assert waiters == {}
