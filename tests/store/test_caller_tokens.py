"""caller_tokens: a token differs from every other caller's, in this process and in others."""

from __future__ import annotations

import subprocess
import sys

import pytest

from apply_layer.store.caller_tokens import new_token

pytestmark = pytest.mark.unit  # scripts/test.sh --fast


def test_tokens_in_one_process_never_repeat() -> None:
    tokens = [new_token() for _ in range(100_000)]
    assert len(set(tokens)) == len(tokens)


def test_two_processes_draw_different_prefixes() -> None:
    """A lease token names its holder across instances: two daemons must not share one."""
    code = "from apply_layer.store.caller_tokens import new_token; print(new_token())"
    first, second = (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    )
    assert first != second
    assert first[:12] != second[:12]  # the per-process random prefix (6 bytes, hex)
