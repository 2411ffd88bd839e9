"""What the gate needs of ``notify-keyspace-events`` (store/keyspace_setting.py)."""

from __future__ import annotations

import pytest

from apply_layer.store.keyspace_setting import REQUIRED_CLASSES, covers, merged_flags

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("flags", "enough"),
    [
        ("K$h", True),
        ("Kh$", True),
        ("KA", True),  # A is every class but key-miss and new-key
        ("Ex$hK", True),
        ("", False),
        ("K$", False),  # no h: a HASH permit would never wake a waiter
        ("E$h", False),  # keyevent channels only: the watcher reads keyspace ones
        ("A", False),  # A without K publishes nothing on a channel
    ],
)
def test_covers_says_whether_every_needed_class_is_published(flags: str, enough: bool) -> None:
    assert covers(flags) is enough


def test_merged_flags_adds_only_what_is_missing_and_keeps_the_rest() -> None:
    assert REQUIRED_CLASSES == "K$h"
    assert merged_flags("") == "K$h"
    assert merged_flags("Ex") == "ExK$h"  # another service's keyevent expiry stays
    assert merged_flags("KA") == "KA"  # A covers $ and h
    assert covers(merged_flags("Elg"))
