"""Every Redis key and stream name the apply layer touches, in one place.

Names follow docs/CONTRACT.md, which says who writes and who reads each.
``{plan_id}`` in a template is a placeholder, not a Redis Cluster hash tag;
scripts receive every key in ``KEYS`` so that a later template can add hash
tags without touching Lua.
"""

from __future__ import annotations

from dataclasses import dataclass

PLAN_STREAM = "quantum:stream:apply.plan"
RESULT_STREAM = "quantum:stream:apply.result"
KILL_SWITCH_KEYS = ("quantum:global:kill_switch", "quantum:kill")
HEARTBEAT_KEY = "quantum:svc:apply_layer:heartbeat"
# Written every tick, the heartbeat is also the keyspace watcher's canary: with
# notify-keyspace-events K$ its SET is published on keyspace_channel(HEARTBEAT_KEY, db).

GOVERNOR_BLOCK_TEMPLATE = "quantum:governor:block:{plan_id}"
# The daemon's own claim on a plan id (which stream entry drives it). Not
# ``quantum:apply:dedupe:{plan_id}``: the planner sets that key itself before it
# publishes, so the daemon never reads, writes or deletes it (docs/CONTRACT.md).
CLAIM_TEMPLATE = "quantum:apply:claim:{plan_id}"
JOURNAL_TEMPLATE = "quantum:apply:journal:{plan_id}"
COOLDOWN_TEMPLATE = "quantum:cooldown:last_exec_ts:{symbol}"
SYMBOL_LEASE_TEMPLATE = "quantum:apply:lease:{symbol}"
# The last send recorded on a symbol (``<journal key>@<send ms>``), set by the attempt
# script: a position read ahead of the lease is trusted only if this has not moved
# since. Under the lease's prefix, so the daemon's ACL (~quantum:apply:lease:*) covers it.
LAST_SEND_TEMPLATE = "quantum:apply:lease:{symbol}:last_send"
LAST_SEND_TTL_SEC = 24 * 3600

STREAM_MAXLEN = 10_000
COOLDOWN_TTL_SEC = 3600


@dataclass(frozen=True)
class Issuer:
    """A permit authority: its name, its key template, and whether it sizes orders."""

    name: str
    key_template: str
    carries_qty: bool = False

    def key(self, plan_id: str) -> str:
        return self.key_template.format(plan_id=plan_id)


ISSUERS: dict[str, Issuer] = {
    "governor": Issuer("governor", "quantum:permit:{plan_id}"),
    "p33": Issuer("p33", "quantum:permit:p33:{plan_id}", carries_qty=True),
    "p26": Issuer("p26", "quantum:permit:p26:{plan_id}"),
}


def governor_block(plan_id: str) -> str:
    return GOVERNOR_BLOCK_TEMPLATE.format(plan_id=plan_id)


def claim(plan_id: str) -> str:
    return CLAIM_TEMPLATE.format(plan_id=plan_id)


def journal(plan_id: str) -> str:
    return JOURNAL_TEMPLATE.format(plan_id=plan_id)


def cooldown(symbol: str) -> str:
    return COOLDOWN_TEMPLATE.format(symbol=symbol)


def symbol_lease(symbol: str) -> str:
    return SYMBOL_LEASE_TEMPLATE.format(symbol=symbol)


def last_send(symbol: str) -> str:
    return LAST_SEND_TEMPLATE.format(symbol=symbol)


def keyspace_channel(key: str, db: int) -> str:
    """The channel Redis publishes writes to ``key`` (a key or a glob) on, in database ``db``.

    The watcher pattern-subscribes to these, the ACL grants them (``&`` rules,
    compared as text), ``check`` probes them: all from here.
    """
    return f"__keyspace@{db}__:{key}"


def glob_of(template: str) -> str:
    """The SCAN / PSUBSCRIBE pattern that matches every key of a template."""
    head, _, _ = template.partition("{")
    return head + "*"
