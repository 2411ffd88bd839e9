"""Which Redis permissions a user lacks for the daemon or the operators' CLI (``check``).

The shipped ACL (deploy/redis/apply-layer.acl) gives the daemon only the
commands, keys and channels it uses. To tell an operator exactly what a
user is missing, every command a role sends is *queued* inside ``MULTI``
with representative keys and channels, then the transaction is discarded:
Redis checks the ACL when it queues a command, answers ``NOPERM`` naming the
command, a key or a channel, and runs nothing. Unlike ``ACL DRYRUN`` (admin
only), this works with the user's own rights; it needs ``+multi +discard``.

The probe tables below are the list of what each role sends, commands run
inside the scripts included (Redis checks those against the caller too).

The same queueing proves what the daemon's user may *not* do
(:func:`daemon_refusals`, issue 21): write a permit, a plan or the kill
switch, lift a governor block, delete or trim the plan stream, reach another
database, run a script of its own (``EVAL``, ``SCRIPT LOAD``) or change the
function library. Each must be refused with ``NOPERM`` when it is queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from apply_layer.core import keys as K
from apply_layer.core.errors import ProbeRefused
from apply_layer.store.gate import GateConfig
from apply_layer.store.keyspace import channels as keyspace_channels

Role = Literal["daemon", "cli"]
ACL_FILE = "deploy/redis/apply-layer.acl"
PROBE_PLAN = "apply-layer-check"
PROBE_SYMBOL = "CHECKUSDT"
ZERO_SHA = "0" * 40  # never a loaded script: even if EXEC ran, EVALSHA would only fail
# Never a loaded function (EXEC is never sent, and the daemon has no +exec anyway).
PROBE_FUNCTION = "apply_layer_check_probe"


@dataclass(frozen=True)
class Probe:
    """One command as a role sends it, and the ACL rules that allow it."""

    command: tuple[str, ...]
    grant: str  # the command rule, e.g. "+hset" or "+xgroup|create"
    key_rule: str = ""  # the key pattern it needs, e.g. "~quantum:apply:journal:*"
    channel_rule: str = ""

    def missing_rule(self, refusal: str) -> str:
        """The rule a ``NOPERM`` answer says is missing (Redis names the kind)."""
        if "channel" in refusal and self.channel_rule:
            return self.channel_rule
        if "key" in refusal and self.key_rule:
            return self.key_rule
        return self.grant


def _key(name: str) -> tuple[str, str]:
    """A key and the ACL pattern the shipped file grants for it (templates end in ``*``)."""
    return name, "~" + name


def _templated(template: str, **values: str) -> tuple[str, str]:
    return template.format(**values), "~" + K.glob_of(template)


def daemon_probes(
    config: GateConfig, group: str, consumer: str, *, db: int = 0, keyspace: bool = True
) -> list[Probe]:
    """Everything ``apply-layer run`` sends: its own commands and its scripts' commands."""
    plan, sym = PROBE_PLAN, PROBE_SYMBOL
    stream, stream_rule = _key(K.PLAN_STREAM)
    results, results_rule = _key(K.RESULT_STREAM)
    claim = _templated(K.CLAIM_TEMPLATE, plan_id=plan)
    journal = _templated(K.JOURNAL_TEMPLATE, plan_id=plan)
    lease = _templated(K.SYMBOL_LEASE_TEMPLATE, symbol=sym)
    cooldown = _templated(K.COOLDOWN_TEMPLATE, symbol=sym)
    block = _templated(K.GOVERNOR_BLOCK_TEMPLATE, plan_id=plan)
    permits = [_templated(i.key_template, plan_id=plan) for i in config.issuers]
    kills = [_key(k) for k in K.KILL_SWITCH_KEYS]
    heartbeat = _key(K.HEARTBEAT_KEY)

    def on(key: tuple[str, str], name: str, *args: str) -> Probe:
        return Probe((name.upper(), key[0], *args), "+" + name.lower(), key[1])

    def reads(key: tuple[str, str], name: str, *args: str) -> Probe:
        # Another service's key: read-only (%R~), in the selector of the read commands.
        return Probe((name.upper(), key[0], *args), "+" + name.lower(), "%R" + key[1])

    probes = [Probe(("PING",), "+ping"), Probe(("CLIENT", "SETNAME", "check"), "+client|setname")]
    if db:  # this database only (redis-py selects it on each connection)
        probes.append(Probe(("SELECT", str(db)), f"+select|{db}"))
    probes += [
        # Each new connection reads the server's identity (store/identity.py); a send
        # record with APPLY_REDIS_WAIT_REPLICAS goes by FCALL, then WAIT (not probed here).
        Probe(("INFO", "server"), "+info"),
        # The scripts are functions of the library an admin loaded (store/functions.py):
        # FCALL needs read and write access to every key it is given, whatever the
        # function does with it; +fcall is the only command of that selector.
        *(
            Probe(("FCALL", PROBE_FUNCTION, "1", key), "+fcall", f"(+fcall {rule})")
            for key, rule in [
                (stream, stream_rule),
                (results, results_rule),
                claim,
                journal,
                lease,
                cooldown,
                block,
                *permits,
                *kills,
            ]
        ),
        Probe(
            ("XREADGROUP", "GROUP", group, consumer, "COUNT", "1", "STREAMS", stream, ">"),
            "+xreadgroup",
            stream_rule,
        ),
        Probe(("XACK", stream, group, "0-1"), "+xack", stream_rule),
        Probe(("XADD", results, "MAXLEN", "~", "10000", "*", "probe", "1"), "+xadd", results_rule),
        Probe(
            ("XAUTOCLAIM", stream, group, consumer, "1000", "0-0", "COUNT", "1"),
            "+xautoclaim",
            stream_rule,
        ),
        Probe(("XPENDING", stream, group), "+xpending", stream_rule),
        Probe(("XRANGE", stream, "0-1", "0-1"), "+xrange", stream_rule),
        Probe(("XGROUP", "CREATE", stream, group, "$", "MKSTREAM"), "+xgroup|create", stream_rule),
        Probe(
            ("XGROUP", "DELCONSUMER", stream, group, consumer), "+xgroup|delconsumer", stream_rule
        ),
        Probe(("XINFO", "CONSUMERS", stream, group), "+xinfo|consumers", stream_rule),
        Probe(("XINFO", "GROUPS", stream), "+xinfo|groups", stream_rule),
        on(heartbeat, "set", "1", "EX", "15"),
        # Inside the claim, gate, lease, attempt and publish functions:
        on(claim, "set", "1", "NX", "EX", "300"),
        on(claim, "get"),
        on(journal, "hmget", "state"),
        on(journal, "hget", "state"),
        on(journal, "hset", "state", "x"),
        on(journal, "hexists", "result_id"),
        on(journal, "hgetall"),
        on(journal, "expire", "60"),
        on(claim, "type"),
        on(journal, "type"),
        reads(block, "type"),
        reads(block, "get"),
        reads(block, "strlen"),
        reads(block, "getrange", "0", "63"),
        *(reads(kill, "type") for kill in kills),  # kill_on(): TYPE, STRLEN, then GET
        *(reads(kill, "strlen") for kill in kills),
        *(reads(kill, "get") for kill in kills),
        on(lease, "type"),
        on(lease, "set", "1", "NX", "PX", "1000"),
        on(lease, "get"),
        on(lease, "pexpire", "1000"),
        on(lease, "del"),
        on(cooldown, "set", "1", "EX", "3600"),
    ]
    for permit in permits:
        probes += [reads(permit, "type"), reads(permit, "get"), reads(permit, "strlen")]
        probes += [reads(permit, "getrange", "0", "63"), reads(permit, "ttl")]
        # A HASH permit is sized (HLEN, MEMORY USAGE) before it is read (gate.lua).
        probes += [reads(permit, "hlen"), reads(permit, "hgetall")]
        probes.append(
            Probe(("MEMORY", "USAGE", permit[0], "SAMPLES", "0"), "+memory|usage", "%R" + permit[1])
        )
        # Consumed with UNLINK, the one write the daemon may make to a permit.
        probes.append(Probe(("UNLINK", permit[0]), "+unlink", "%W" + permit[1]))
    if keyspace:  # the gate's patterns and the heartbeat's channel (the watcher's canary)
        for channel in keyspace_channels(config.watch_patterns(), db):
            probes.append(Probe(("PSUBSCRIBE", channel), "+psubscribe", "", "&" + channel))
    return probes


def cli_probes(config: GateConfig, *, db: int = 0) -> list[Probe]:
    """What ``permits``, ``stats --from-redis``, ``check`` and ``dedupe-clear`` send."""
    plan = PROBE_PLAN
    read = "%R~quantum:*"

    def reads(key: str, name: str, *args: str) -> Probe:
        return Probe((name.upper(), key, *args), "+" + name.lower(), read)

    probes = [Probe(("PING",), "+ping"), Probe(("CLIENT", "SETNAME", "check"), "+client|setname")]
    if db:
        probes.append(Probe(("SELECT", str(db)), "+select"))
    probes.append(Probe(("INFO", "server"), "+info"))
    for key in [
        *(issuer.key(plan) for issuer in config.issuers),
        K.governor_block(plan),
        *K.KILL_SWITCH_KEYS,
    ]:
        probes += [reads(key, "type"), reads(key, "ttl"), reads(key, "get")]
        probes += [reads(key, "strlen"), reads(key, "getrange", "0", "63")]  # oversized ones
    probes += [reads(issuer.key(plan), "hgetall") for issuer in config.issuers]
    probes += [
        reads(K.journal(plan), "hgetall"),
        reads(K.RESULT_STREAM, "xrange", "-", "+", "COUNT", "1"),
        reads(K.RESULT_STREAM, "xrevrange", "+", "-", "COUNT", "1"),
        Probe(("XINFO", "GROUPS", K.PLAN_STREAM), "+xinfo|groups", read),
        # dedupe-clear: find and delete the daemon's claim keys, nothing else.
        Probe(("SCAN", "0", "MATCH", K.claim("*"), "COUNT", "10"), "+scan"),
        Probe(("EXISTS", K.claim(plan)), "+exists", read),
        Probe(("UNLINK", K.claim(plan)), "+unlink", "~" + K.glob_of(K.CLAIM_TEMPLATE)),
    ]
    return probes


@dataclass(frozen=True)
class Refusal:
    """Something the daemon's user must not be able to do, and one command that does it."""

    label: str  # what it would let the holder of the credential do
    command: tuple[str, ...]


def daemon_refusals(config: GateConfig, *, db: int = 0) -> list[Refusal]:
    """What the daemon's credential must not do (issue 21's list); each must be refused."""
    plan = PROBE_PLAN
    permit_json = '{"granted": true, "allow": true, "safe_qty": "1"}'
    refusals = [
        Refusal(f"write the {i.name} permit", ("SET", i.key(plan), permit_json))
        for i in config.issuers
    ]
    refusals += [
        Refusal(f"write the {i.name} permit as a HASH", ("HSET", i.key(plan), "allow", "true"))
        for i in config.issuers
    ]
    other = 1 if db == 0 else 0
    refusals += [
        Refusal("lift a governor block", ("DEL", K.governor_block(plan))),
        Refusal("publish a plan", ("XADD", K.PLAN_STREAM, "*", "plan_id", plan)),
        Refusal("delete the plan stream", ("DEL", K.PLAN_STREAM)),
        Refusal("trim the plan stream", ("XTRIM", K.PLAN_STREAM, "MAXLEN", "0")),
        Refusal("move the consumer group", ("XGROUP", "SETID", K.PLAN_STREAM, "g", "$")),
        *(Refusal(f"turn off {k}", ("SET", k, "0")) for k in K.KILL_SWITCH_KEYS),
        *(Refusal(f"delete {k}", ("DEL", k)) for k in K.KILL_SWITCH_KEYS),
        Refusal("reach another database", ("SELECT", str(other))),
        Refusal("run a script of its own", ("EVAL", "return 1", "0")),
        Refusal("run a loaded script", ("EVALSHA", ZERO_SHA, "0")),
        Refusal("load a script", ("SCRIPT", "LOAD", "return 1")),
        Refusal("kill a script", ("SCRIPT", "KILL")),
        Refusal("load a function library", ("FUNCTION", "LOAD", "#!lua name=x\n")),
        Refusal("delete a function library", ("FUNCTION", "DELETE", "x")),
        Refusal("flush the function libraries", ("FUNCTION", "FLUSH")),
        Refusal("change the server's configuration", ("CONFIG", "SET", "appendonly", "no")),
    ]
    return refusals


async def missing_permissions(redis: Redis, probes: Sequence[Probe]) -> list[str]:
    """The ACL rules ``redis``'s user lacks for ``probes`` (empty: all allowed); runs nothing."""
    answers = await _queue([probe.command for probe in probes], redis)
    missing: dict[str, None] = {}
    for probe, answer in zip(probes, answers, strict=True):
        if isinstance(answer, NoPermissionError):
            missing[probe.missing_rule(str(answer))] = None
        elif answer is not None:  # e.g. a command this server version lacks
            missing[f"{probe.grant} ({answer})"] = None
    return list(missing)


async def allowed_refusals(redis: Redis, refusals: Sequence[Refusal]) -> list[str]:
    """The labels of ``refusals`` that ``redis``'s user may do (empty: all refused).

    Queued inside ``MULTI`` and discarded, like the probes: nothing is run.
    Only ``NOPERM`` proves a refusal; any other answer (queued, or an error
    such as a command the server lacks) is not proof, and is listed.
    """
    answers = await _queue([r.command for r in refusals], redis)
    return [r.label for r, a in zip(refusals, answers, strict=True) if not _noperm(a)]


def _noperm(answer: ResponseError | None) -> bool:
    return isinstance(answer, NoPermissionError)


async def _queue(commands: Sequence[tuple[str, ...]], redis: Redis) -> list[ResponseError | None]:
    """Queue each command inside ``MULTI``, then ``DISCARD``: Redis checks the ACL when
    it queues; None when queued, else the error it answered. Runs nothing."""
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    clean = False
    try:
        await conn.send_command("MULTI")
        try:
            await conn.read_response()
        except NoPermissionError:
            raise ProbeRefused("MULTI refused: grant +multi +discard to probe") from None
        answers: list[ResponseError | None] = []
        for command in commands:
            await conn.send_command(*command)
            try:
                await conn.read_response()
                answers.append(None)
            except ResponseError as exc:
                answers.append(exc)
        await conn.send_command("DISCARD")
        await conn.read_response()
        clean = True
        return answers
    finally:
        if not clean:  # the connection may still be inside MULTI: never reuse it
            await conn.disconnect()
        await pool.release(conn)


async def whoami(redis: Redis) -> str | None:
    """The ACL user name of this connection, or None when the server will not say."""
    try:
        name = await redis.execute_command("ACL", "WHOAMI")  # type: ignore[no-untyped-call]
    except RedisError:
        return None
    return str(name)
