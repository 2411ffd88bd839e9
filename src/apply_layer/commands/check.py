"""``apply-layer check``: pre-flight, one line per check, non-zero exit if any fails."""

from __future__ import annotations

import argparse
import stat
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from apply_layer.commands.permits import read_kill_switch
from apply_layer.core import keys as K
from apply_layer.core.check_line import CheckLine
from apply_layer.core.errors import (
    ConfigError,
    ExecutorUnavailable,
    FunctionLibraryMissing,
    ProbeRefused,
)
from apply_layer.daemon.signature_policy import SignaturePolicy
from apply_layer.executors import create_executor
from apply_layer.ops.acl_probes import (
    ACL_FILE,
    Role,
    allowed_refusals,
    cli_probes,
    daemon_probes,
    daemon_refusals,
    missing_permissions,
    whoami,
)
from apply_layer.ops.topology import topology_checks
from apply_layer.settings import Settings, unknown_env_vars
from apply_layer.store.batching import ScriptBatcher
from apply_layer.store.connection import close_redis, redis_db, redis_for
from apply_layer.store.functions import LIBRARY
from apply_layer.store.gate import GateConfig
from apply_layer.store.keyspace_setting import REQUIRED_CLASSES, covers

DEFAULT_ENV_FILE = Path("/etc/quantum/apply-layer.env")


def env_file_check(path: Path) -> CheckLine:
    """An env file holds secrets: it must not be readable by everyone."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return CheckLine("env file", False, f"{path}: {exc.strerror}")
    if mode & stat.S_IROTH:
        return CheckLine("env file", False, f"{path} is world-readable (chmod 600 {path})")
    return CheckLine("env file", True, f"{path} mode {stat.S_IMODE(mode):04o}")


def settings_checks(settings: Settings) -> list[CheckLine]:
    lines = [
        CheckLine(
            "settings",
            True,
            f"mode={settings.mode} allowlist={','.join(settings.allowlist)} "
            f"permits={','.join(settings.required_permits)} "
            f"wait={settings.permit_wait_ms}ms step={settings.permit_step_ms}ms",
        )
    ]
    unknown = unknown_env_vars()
    if unknown:
        lines.append(
            CheckLine("settings", False, f"unknown variables (typos?): {', '.join(unknown)}")
        )
    if settings.kill_switch:
        lines.append(
            CheckLine("kill switch", True, "APPLY_KILL_SWITCH=true: every plan is blocked")
        )
    lines.append(signing_check(settings))
    return lines


def signing_check(settings: Settings) -> CheckLine:
    """Signed permits: the modes and key ids `run` would use, or why it could not start."""
    try:
        policy = SignaturePolicy.from_settings(settings)
    except ConfigError as exc:
        return CheckLine("permit signing", False, str(exc))
    return CheckLine("permit signing", True, policy.describe())


async def permission_check(redis: Redis, settings: Settings, role: Role) -> CheckLine:
    """Which commands, keys and channels the user lacks for ``role`` (nothing is run)."""
    config = GateConfig.from_settings(settings)
    db = redis_db(redis)
    if role == "daemon":
        probes = daemon_probes(
            config,
            settings.consumer_group,
            settings.consumer_name,
            db=db,
            keyspace=settings.keyspace_events != "off",
        )
    else:
        probes = cli_probes(config, db=db)
    user = await whoami(redis) or "?"
    name = f"permissions ({role})"
    try:
        missing = await missing_permissions(redis, probes)
    except ProbeRefused as exc:
        return CheckLine(name, False, f"user {user}: {exc} ({ACL_FILE})")
    if missing:
        return CheckLine(name, False, f"user {user} lacks {' '.join(missing)} (see {ACL_FILE})")
    detail = f"user {user}: every command, key and channel the {role} uses is allowed"
    if user == "default":
        detail += f"; the default user may do anything: {ACL_FILE} has least-privilege users"
    return CheckLine(name, True, detail)


async def redis_checks(redis: Redis, settings: Settings, role: Role = "daemon") -> list[CheckLine]:
    lines: list[CheckLine] = []
    started = time.perf_counter()
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        return [CheckLine("redis", False, f"unreachable: {exc}")]
    latency = (time.perf_counter() - started) * 1000
    try:
        info: dict[str, Any] = await redis.info("server")
    except RedisError:  # a least-privilege user may not run INFO
        info = {"redis_version": "? (INFO refused)"}
    lines.append(
        CheckLine("redis", True, f"version {info.get('redis_version', '?')}, ping {latency:.1f} ms")
    )
    lines.append(await permission_check(redis, settings, role))
    if role == "daemon":
        lines.append(await refusal_check(redis, settings))
        lines.append(await library_check(redis))
    lines.extend(await _stream_checks(redis, settings))
    return lines


async def library_check(redis: Redis) -> CheckLine:
    """Whether this version's function library is loaded (store/functions.py), as ``run`` checks
    it at start: loaded now if the user may (not the shipped one), else a FAIL saying how."""
    batcher = ScriptBatcher(redis, library=LIBRARY)
    try:
        how = await batcher.prepare()
    except FunctionLibraryMissing as exc:
        return CheckLine("functions", False, str(exc))
    except RedisError as exc:
        return CheckLine("functions", False, f"{LIBRARY.name}: {exc}")
    return CheckLine("functions", True, how)


async def refusal_check(redis: Redis, settings: Settings) -> CheckLine:
    """Proof that the daemon's user cannot authorise itself (issue 21): each thing of
    ``daemon_refusals`` is queued and must be refused. Nothing is run."""
    name = "refusals (daemon)"
    user = await whoami(redis) or "?"
    refusals = daemon_refusals(GateConfig.from_settings(settings), db=redis_db(redis))
    try:
        allowed = await allowed_refusals(redis, refusals)
    except ProbeRefused as exc:
        return CheckLine(name, False, f"user {user}: {exc} ({ACL_FILE})")
    if not allowed:
        return CheckLine(name, True, f"user {user} may not {'; '.join(r.label for r in refusals)}")
    detail = f"user {user} may {'; '.join(allowed)}: it could authorise itself"
    if user == "default":  # a test or demo server; said, not failed
        return CheckLine(name, True, f"{detail} (the default user; {ACL_FILE} for production)")
    return CheckLine(name, False, f"{detail} (apply {ACL_FILE})")


async def _stream_checks(redis: Redis, settings: Settings) -> list[CheckLine]:
    lines = []
    try:
        groups = await redis.xinfo_groups(K.PLAN_STREAM)
    except RedisError:
        groups = []
    names = {str(g.get("name")) for g in groups}
    if settings.consumer_group in names:
        group = next(g for g in groups if str(g.get("name")) == settings.consumer_group)
        lines.append(
            CheckLine(
                "consumer group",
                True,
                f"{settings.consumer_group} on {K.PLAN_STREAM}: "
                f"{group.get('consumers')} consumers, {group.get('pending')} pending",
            )
        )
    else:
        lines.append(
            CheckLine(
                "consumer group",
                True,
                f"{settings.consumer_group} absent: `run` creates it at the stream's end ($)",
            )
        )
    lines.append(await _keyspace_check(redis, settings))
    kill = await kill_switch_check(redis)
    if kill is not None:
        lines.append(kill)
    return lines


async def kill_switch_check(redis: Redis) -> CheckLine | None:
    """A line when a kill switch key is on (read as the gate reads it), else None."""
    on = [key for key, is_on in (await read_kill_switch(redis)).items() if is_on]
    if not on:
        return None
    return CheckLine("kill switch", True, f"ON via {', '.join(on)}: every plan is blocked")


async def _keyspace_check(redis: Redis, settings: Settings) -> CheckLine:
    try:
        flags = str(
            (await redis.config_get("notify-keyspace-events")).get("notify-keyspace-events") or ""
        )
    except RedisError:
        return CheckLine(
            "keyspace events",
            True,
            "unknown (CONFIG GET refused, as for the ACL user): `run` subscribes anyway "
            "and expects its heartbeat's own event each tick; without one it polls every "
            f"{settings.permit_step_ms} ms and apply_keyspace_notifications_active says 0",
        )
    if covers(flags):
        return CheckLine(
            "keyspace events",
            True,
            f"on ({flags!r}): the gate reacts to a permit in ~1 ms; costs one pub/sub "
            "message per permit write",
        )
    if settings.keyspace_events == "enable":
        return CheckLine(
            "keyspace events", True, f"off ({flags!r}); `run` will add {REQUIRED_CLASSES}"
        )
    return CheckLine(
        "keyspace events",
        True,
        f"off ({flags!r}): the gate polls every {settings.permit_step_ms} ms (about "
        f"{settings.permit_step_ms // 2} ms added latency); "
        "APPLY_KEYSPACE_EVENTS=enable turns them on",
    )


async def executor_checks(settings: Settings) -> list[CheckLine]:
    try:
        executor = create_executor(settings)
    except ExecutorUnavailable as exc:
        return [CheckLine("exchange", False, str(exc))]
    try:
        await executor.start()
        return await executor.preflight()
    except Exception as exc:
        return [CheckLine("exchange", False, f"{type(exc).__name__}: {exc}")]
    finally:
        await executor.close()


async def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    lines = settings_checks(settings)
    env_file = Path(args.env_file) if args.env_file else DEFAULT_ENV_FILE
    if args.env_file or env_file.exists():
        lines.append(env_file_check(env_file))
    redis = redis_for(settings, name="apply_layer:check")
    try:
        redis_lines = await redis_checks(redis, settings, args.role)
        lines.extend(redis_lines)
        if redis_lines[0].ok:
            lines.extend(await topology_checks(redis, settings))
    finally:
        await close_redis(redis)
    lines.extend(await executor_checks(settings))
    width = max(len(line.name) for line in lines)
    for line in lines:
        print(f"[{' OK ' if line.ok else 'FAIL'}] {line.name:<{width}}  {line.detail}")
    failed = sum(not line.ok for line in lines)
    print(f"{len(lines) - failed} ok, {failed} failed")
    return 1 if failed else 0


def register(sub: Any) -> None:
    check = sub.add_parser(
        "check",
        help="pre-flight: settings, Redis (and its topology), permissions and refusals, "
        "function library, exchange",
    )
    check.add_argument(
        "--role",
        choices=["daemon", "cli"],
        default="daemon",
        help="whose Redis permissions to check: the daemon's (default) or the operators' CLI",
    )
    check.set_defaults(func=cmd_check)
