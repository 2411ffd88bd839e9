"""ACL helpers for the tests: set a user's rules, read what the server refused."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis


async def setuser(admin: Redis, user: str, *rules: str) -> None:
    """``ACL SETUSER user rules...`` (redis-py's acl_setuser has no selector/channel syntax)."""
    await admin.execute_command("ACL", "SETUSER", user, *rules)  # type: ignore[no-untyped-call]


async def refusals(admin: Redis, user: str, reason: str | None = None) -> int:
    """Commands, keys or channels refused to ``user`` (ACL LOG folds repeats into a count)."""
    entries: list[dict[str, Any]] = await admin.acl_log()
    return sum(
        int(e["count"])
        for e in entries
        if e["username"] == user and (reason is None or e["reason"] == reason)
    )
