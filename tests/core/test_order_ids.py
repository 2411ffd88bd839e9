"""Client order ids (pure): each code, each boundary, the two forms written out.

tests/executors/binance/test_order_ids.py holds the ids against Binance's
rules and the processor; these tests need no Redis, so that mutation testing
can run them per mutant. The ids are pinned as literals on purpose: an order in
flight is found again only under the id it was sent with, so any change to
them is a bug, whatever the code says.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal

from apply_layer.core import order_ids
from apply_layer.core.order_ids import CLIENT_ORDER_ID_MAX, client_order_id, step_code


def test_a_step_code_is_f_for_a_full_close_else_the_share() -> None:
    # STEP_CODES is built from _code at import; call it here so its rule is tested.
    assert order_ids._code(Decimal(100)) == "F"
    assert order_ids._code(Decimal("100.0")) == "F"
    assert order_ids._code(Decimal(75)) == "75"
    assert order_ids._code(Decimal(99)) == "99"
    assert order_ids._code(Decimal(101)) == "101"
    assert order_ids._code(Decimal("12.5")) == "12.5"
    assert order_ids._code(Decimal("1E+1")) == "10"  # plain digits, never an exponent


def test_known_steps_take_their_code_and_others_a_digest_of_the_name() -> None:
    assert step_code("CLOSE_FULL") == "F"
    assert step_code("PARTIAL_25") == "25"
    assert step_code("TRAILING_STOP") == "3ca1"
    assert step_code("TRAILING_STOP") == (
        hashlib.blake2b(b"TRAILING_STOP", digest_size=2).hexdigest()
    )
    assert step_code("") == hashlib.blake2b(b"", digest_size=2).hexdigest()


def test_the_readable_form_up_to_36_characters_then_the_hashed_one() -> None:
    assert CLIENT_ORDER_ID_MAX == 36
    fits = "p" * 31  # "alF-" + 31 + ... = 35; "al75-" + 31 = 36
    assert client_order_id(fits, "CLOSE_FULL") == "alF-" + fits
    at_max = client_order_id(fits, "CLOSE_PARTIAL_75")
    assert at_max == "al75-" + fits and len(at_max) == 36
    over = "p" * 32  # "al75-" + 32 = 37
    digest = hashlib.blake2b(over.encode(), digest_size=12).hexdigest()
    assert client_order_id(over, "CLOSE_PARTIAL_75") == f"al75.{digest}"
    assert client_order_id(over, "CLOSE_FULL") == "alF-" + over  # 36 with the shorter code


def test_the_hashed_form_written_out() -> None:
    assert client_order_id("x" * 40, "CLOSE_FULL") == "alF.8d13430e3a1a9cc65250e07f"
    assert client_order_id("x" * 40, "TRAILING_STOP") == "al3ca1.8d13430e3a1a9cc65250e07f"


def test_a_plan_id_with_a_dot_is_always_hashed() -> None:
    # Never the readable form: a "." there would make it look like a hashed id.
    digest = hashlib.blake2b(b"a.b", digest_size=12).hexdigest()
    assert client_order_id("a.b", "CLOSE_FULL") == f"alF.{digest}"
    assert client_order_id(".", "PARTIAL_50") == (
        f"al50.{hashlib.blake2b(b'.', digest_size=12).hexdigest()}"
    )
