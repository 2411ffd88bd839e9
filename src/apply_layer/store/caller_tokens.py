"""Unique tokens for gate calls and leases, cheaply.

A token only has to differ from every other caller's: a random prefix drawn
once per process plus a counter does that, without a uuid4 (and its
``os.urandom`` call) per plan, which showed in the benchmark's profile.
"""

from __future__ import annotations

import itertools
import secrets

_PREFIX = secrets.token_hex(6)
_COUNTER = itertools.count(1)


def new_token() -> str:
    return f"{_PREFIX}{next(_COUNTER):x}"
