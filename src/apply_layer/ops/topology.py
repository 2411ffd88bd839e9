"""``apply-layer check``: where Redis runs (sentinels, primary, replicas, lag, persistence).

The parsing is pure (:func:`replication_lines`, :func:`persistence_line`);
:func:`topology_checks` asks the server, and the sentinels when
``APPLY_REDIS_SENTINELS`` is set.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from apply_layer.core.check_line import CheckLine
from apply_layer.settings import Settings
from apply_layer.store.connection import sentinel_of
from apply_layer.store.identity import parse_info


def _replica(raw: str) -> dict[str, str]:
    """``ip=10.0.0.6,port=6379,state=online,offset=1234,lag=0`` as a dict."""
    return dict(part.split("=", 1) for part in raw.split(",") if "=" in part)


def replication_lines(info: dict[str, str], settings: Settings) -> list[CheckLine]:
    """The primary and each replica, from the primary's ``INFO replication``."""
    role = info.get("role", "?")
    if role != "master":
        where = f"{info.get('master_host', '?')}:{info.get('master_port', '?')}"
        return [CheckLine("redis primary", False, f"this server is a {role} of {where}")]
    offset = int(info.get("master_repl_offset", "0") or 0)
    count = int(info.get("connected_slaves", "0") or 0)
    lines = [
        CheckLine(
            "redis primary",
            True,
            f"{count} replica(s) connected, replication offset {offset}, "
            f"replid {info.get('master_replid', '?')[:12]}",
        )
    ]
    online = 0
    for n in range(count):
        replica = _replica(info.get(f"slave{n}", ""))
        state = replica.get("state", "?")
        behind = offset - int(replica.get("offset", "0") or 0)
        online += state == "online"
        lines.append(
            CheckLine(
                "redis replica",
                state == "online",
                f"{replica.get('ip', '?')}:{replica.get('port', '?')} {state}, "
                f"lag {replica.get('lag', '?')} s, {behind} bytes behind",
            )
        )
    if settings.redis_sentinels and not online:
        lines.append(CheckLine("redis replica", False, "none online: a failover has nowhere to go"))
    if settings.redis_wait_replicas > online:
        lines.append(
            CheckLine(
                "redis wait",
                False,
                f"APPLY_REDIS_WAIT_REPLICAS={settings.redis_wait_replicas} but {online} "
                "replica(s) online: every send would end FAILED journal_not_replicated",
            )
        )
    elif settings.redis_wait_replicas:
        lines.append(
            CheckLine(
                "redis wait",
                True,
                f"each send record waits for {settings.redis_wait_replicas} replica(s)",
            )
        )
    return lines


def persistence_line(config: dict[str, Any]) -> CheckLine:
    """What a crash of this server would lose, from ``CONFIG GET`` of the persistence knobs."""
    aof = str(config.get("appendonly", "")) == "yes"
    fsync = str(config.get("appendfsync", "?"))
    save = str(config.get("save", "")).strip()
    if aof:
        loss = {
            "always": "nothing acknowledged",
            "everysec": "up to about 1 s of writes",
            "no": "up to ~30 s of writes (the OS decides)",
        }.get(fsync, "?")
        detail = f"AOF on, appendfsync {fsync}: a crash loses {loss}"
    elif save:
        detail = f"RDB only (save {save!r}): a crash loses every write since the last snapshot"
    else:
        detail = "none: a restart loses every plan, journal and result"
    return CheckLine(
        "redis persistence", True, detail + " (orders are still never sent twice: see RELIABILITY)"
    )


async def sentinel_line(manager: Sentinel, service: str) -> CheckLine:
    """How many sentinels answer for ``service``, and whether they agree on its primary."""
    answers: list[dict[str, Any]] = []
    for sentinel in manager.sentinels:
        try:
            state: Any = await sentinel.sentinel_master(service)
            answers.append(state)
        except (RedisError, OSError):
            continue
    total = len(manager.sentinels)
    if not answers:
        return CheckLine("redis sentinels", False, f"none of {total} answers for {service!r}")
    primaries = {f"{a.get('ip')}:{a.get('port')}" for a in answers}
    quorum = max(int(a.get("quorum", 0)) for a in answers)
    majority = total // 2 + 1
    ok = len(answers) >= max(quorum, majority) and len(primaries) == 1
    detail = (
        f"{len(answers)} of {total} answer for {service!r} (quorum {quorum}, a failover "
        f"needs {majority}); primary {', '.join(sorted(primaries))}"
    )
    if len(primaries) > 1:
        detail += ": they disagree"
    return CheckLine("redis sentinels", ok, detail)


async def topology_checks(redis: Redis, settings: Settings) -> list[CheckLine]:
    lines: list[CheckLine] = []
    manager = sentinel_of(redis)
    if manager is not None:
        lines.append(await sentinel_line(manager, settings.redis_sentinel_service))
    try:
        info = parse_info(await redis.info("replication"))
    except (RedisError, OSError) as exc:
        return [*lines, CheckLine("redis primary", False, f"INFO replication: {exc}")]
    lines.extend(replication_lines(info, settings))
    config: dict[str, Any] = {}
    try:
        for name in ("appendonly", "appendfsync", "save"):
            reply: dict[Any, Any] = await redis.config_get(name)
            config |= {str(k): v for k, v in reply.items()}
    except (RedisError, OSError):
        return [*lines, CheckLine("redis persistence", True, "CONFIG GET refused: unknown")]
    lines.append(persistence_line(config))
    return lines
