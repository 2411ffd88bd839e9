"""Scenario 7: the order path in testnet mode, from the last permit to the exchange.

The daemon (a subprocess, ``APPLY_MODE=testnet``) against the tests' fake
Binance, here speaking TLS with a self-signed certificate made for the run
and holding every answer D ms (0, 20, 50), as a distant exchange would; it
runs in this process, in threads, and notes when each request arrived and
each connection was accepted. Plans go one at a time: the plan, the
governor's permit, 150 ms of permit wait, then P3.3's permit (the last).

Measured per plan: last permit -> the POST's arrival at the exchange, and
-> the result seen on the result stream; the requests and the new (TLS)
connections between the last permit and the POST; the request weight per
order (positionRisk 5, order query 1, new order 0 on the IP limit). Three
phases per daemon: steady (a plan every ~0.3 s), after 7 s idle (each plan
after 7 s without any), and the first plan after a restart (SIGKILL, start
again on the same state directory, a plan at once).

"today's order path" (the table's middle column) is the same bench, the same
run, against the daemon of the code the branch started from: its ``src``
exported with ``git archive`` (``git merge-base HEAD main``, or
``--order-path-base``) and put first on the daemon's ``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from io import BytesIO
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.order_ids import client_order_id
from bench.context import Ctx
from bench.load import Daemon
from bench.report import Row, ScenarioReport
from tests.fake_binance import API_KEY, API_SECRET, ORDER, FakeBinance
from tests.harness import grant, publish_plan

ROOT = Path(__file__).resolve().parent.parent  # the checkout (for "today's order path")
SYMBOL = "BTCUSDT"
STEP = "CLOSE_PARTIAL_75"
PERMIT_WAIT_SEC = 0.15  # governor's permit -> P3.3's: the reads ahead run meanwhile
WEIGHTS = {("GET", "/fapi/v3/positionRisk"): 5, ("GET", ORDER): 1, ("POST", ORDER): 0}


@dataclass
class Sample:
    """One plan, measured from its last permit."""

    to_post_ms: float
    to_result_ms: float
    requests_before_post: int  # requests that arrived between the last permit and the POST
    handshakes_before_post: int  # connections accepted in that interval
    weight: int
    status: str


@dataclass
class PathRun:
    label: str
    hold_ms: int
    steady: list[Sample] = field(default_factory=list)
    idle: list[Sample] = field(default_factory=list)
    restart: Sample | None = None
    restart_ready_ms: float = float("nan")  # the restarted process: start -> started and reading
    connections: int = 0


def make_cert(workdir: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: with ``cryptography`` if this venv has
    it, else the ``openssl`` command."""
    cert, key = workdir / "fake-binance.pem", workdir / "fake-binance.key"
    try:
        _cert_with_cryptography(cert, key)
    except ImportError:
        subprocess.run(  # noqa: S603 - fixed arguments
            [  # noqa: S607
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return str(cert), str(key)


def _cert_with_cryptography(cert: Path, key: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
    from cryptography.hazmat.primitives import hashes, serialization  # type: ignore[import-not-found, unused-ignore]
    from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore[import-not-found, unused-ignore]
    from cryptography.x509.oid import NameOID  # type: ignore[import-not-found, unused-ignore]

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def export_base(root: Path, rev: str, into: Path) -> str | None:
    """``src`` of ``rev`` (default: where this branch left main), exported; its commit."""
    try:
        if not rev:
            base = subprocess.run(  # noqa: S603
                ["git", "-C", str(root), "merge-base", "HEAD", "main"],  # noqa: S607
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
        else:
            base = rev
        archive = subprocess.run(  # noqa: S603
            ["git", "-C", str(root), "archive", base, "src"],  # noqa: S607
            capture_output=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return base[:9]


async def _result(admin: Redis, plan_id: str, after: str, within: float) -> tuple[str, str]:
    """Wait for the plan's result entry; (its status, the last entry id read)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        read: Any = await admin.xread({K.RESULT_STREAM: after}, block=200, count=50)
        for _, entries in read or []:
            for entry_id, fields in entries:
                after = str(entry_id)
                if fields.get("plan_id") == plan_id:
                    return str(fields.get("status", "")), after
    raise TimeoutError(f"no result for {plan_id} within {within:g} s")


class PathDriver:
    """Plans one at a time through one daemon, against one fake exchange."""

    def __init__(self, admin: Redis, fake: FakeBinance, prefix: str) -> None:
        self.admin, self.fake, self.prefix = admin, fake, prefix
        self.count = 0
        self.last_id = "$"

    async def start(self) -> None:
        entries = await self.admin.xrevrange(K.RESULT_STREAM, count=1)
        self.last_id = str(entries[0][0]) if entries else "0"

    async def plan(self, within: float = 30.0) -> Sample:
        self.count += 1
        plan_id = f"{self.prefix}{self.count}"
        cid = client_order_id(plan_id, STEP)
        published = time.time()
        await publish_plan(self.admin, plan_id, symbol=SYMBOL, step=STEP)
        await grant(self.admin, plan_id, symbol=SYMBOL, safe_qty=0.001, position=1e6, p33=False)
        await asyncio.sleep(PERMIT_WAIT_SEC)
        last_permit = time.time()
        await grant(
            self.admin, plan_id, symbol=SYMBOL, safe_qty=0.001, position=1e6, governor=False
        )
        status, self.last_id = await _result(self.admin, plan_id, self.last_id, within)
        seen_result = time.time()
        with self.fake.lock:
            seen = [s for s in self.fake.seen if s.at >= published]
            accepted = [a for a in self.fake.accepted if a >= last_permit]
        posts = [
            s.at for s in seen if s.method == "POST" and s.params.get("newClientOrderId") == cid
        ]
        post_at = posts[0] if posts else seen_result
        return Sample(
            to_post_ms=(post_at - last_permit) * 1000 if posts else float("nan"),
            to_result_ms=(seen_result - last_permit) * 1000,
            requests_before_post=sum(1 for s in seen if last_permit <= s.at < post_at),
            handshakes_before_post=sum(1 for a in accepted if a <= post_at),
            weight=sum(WEIGHTS.get((s.method, s.path), 1) for s in seen if s.at <= seen_result),
            status=status,
        )


async def run_path(
    ctx: Ctx, label: str, hold_ms: int, cert: tuple[str, str], pythonpath: str | None
) -> PathRun:
    s = ctx.sizes
    run = PathRun(label, hold_ms)
    state = ctx.workdir / f"state-{label}-{hold_ms}"
    state.mkdir(exist_ok=True)
    with FakeBinance(keep_alive=True, tls=cert, hold_sec=hold_ms / 1000) as fake:
        fake.positions[SYMBOL] = Decimal(10**6)

        def daemon(suffix: str = "") -> Daemon:
            d = Daemon(
                ctx.url,
                ctx.workdir,
                f"path-{label}-{hold_ms}{suffix}",  # a log of its own: ready() reads it
                mode="testnet",
                allowlist=SYMBOL,
                binance_base_url=fake.url,
                binance_api_key=API_KEY,
                binance_api_secret=API_SECRET,
                state_dir=state,
                log_format="json",  # timestamps, for whoever reads the kept logs
            )
            d.env["SSL_CERT_FILE"] = cert[0]
            if pythonpath:
                d.env["PYTHONPATH"] = pythonpath
            return d

        driver = PathDriver(ctx.admin, fake, f"op{label[0]}{hold_ms}-")
        first = daemon()
        first.start()
        try:
            await first.ready(ctx.admin)
            await driver.start()
            for _ in range(2):  # warm-up: the first start waits out recvWindow, see RELIABILITY
                await driver.plan(within=30.0)
            for _ in range(s.path_plans):
                run.steady.append(await driver.plan())
                await asyncio.sleep(0.1)
            for _ in range(s.path_idle_plans):
                await asyncio.sleep(s.path_idle_sec)
                run.idle.append(await driver.plan())
        finally:
            first.stop()  # SIGKILL
        second = daemon("-restarted")
        began = time.perf_counter()
        second.start()
        try:
            await second.ready(ctx.admin)
            run.restart_ready_ms = (time.perf_counter() - began) * 1000
            run.restart = await driver.plan(within=30.0)
        finally:
            second.stop()
        run.connections = len(fake.accepted)
    return run


def _q(values: list[float], q: float) -> float:
    """The ``q`` quantile (the median for 0.5), leaving out plans with no POST (NaN)."""
    clean = sorted(v for v in values if v == v)
    if not clean:
        return float("nan")
    if q == 0.5:
        return statistics.median(clean)
    return clean[min(len(clean) - 1, int(q * len(clean)))]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _figures(run: PathRun) -> dict[str, float]:
    """Every figure the table shows, for one daemon at one D."""
    steady, idle = run.steady, run.idle
    return {
        "post_p50": _q([x.to_post_ms for x in steady], 0.5),
        "post_p99": _q([x.to_post_ms for x in steady], 0.99),
        "result_p50": _q([x.to_result_ms for x in steady], 0.5),
        "result_p99": _q([x.to_result_ms for x in steady], 0.99),
        "idle_post_p50": _q([x.to_post_ms for x in idle], 0.5),
        "idle_result_p50": _q([x.to_result_ms for x in idle], 0.5),
        "requests_steady": _mean([x.requests_before_post for x in steady]),
        "requests_idle": _mean([x.requests_before_post for x in idle]),
        "handshakes_idle": _mean([x.handshakes_before_post for x in idle]),
        "weight": _mean([x.weight for x in steady]),
        "restart_result": run.restart.to_result_ms if run.restart else float("nan"),
    }


# (key, metric, unit, target at D=20 or "", the test of that target)
_ROWS: tuple[tuple[str, str, str, str, str], ...] = (
    ("post_p50", "p50, last permit -> POST at the exchange", "ms", "<= 10 ms", "10"),
    ("post_p99", "p99, last permit -> POST at the exchange", "ms", "", ""),
    ("result_p50", "p50, last permit -> result seen", "ms", "<= D + 15 ms", "D+15"),
    ("result_p99", "p99, last permit -> result seen", "ms", "", ""),
    ("idle_post_p50", "after 7 s idle: p50, last permit -> POST", "ms", "<= 10 ms", "10"),
    ("idle_result_p50", "after 7 s idle: p50, last permit -> result", "ms", "", ""),
    ("requests_steady", "requests between last permit and POST, steady", "req", "0", "0"),
    ("requests_idle", "requests between last permit and POST, after idle", "req", "", ""),
    ("handshakes_idle", "new connections between last permit and POST, after idle", "conn", "", ""),
    ("weight", "request weight per order", "weight", "", ""),
    ("restart_result", "first plan after a restart: last permit -> result", "ms",
     "<= 1000 ms", "1000"),
)  # fmt: skip


def _rows(new: PathRun, old: PathRun | None) -> list[Row]:
    d = new.hold_ms
    ours, base = _figures(new), _figures(old) if old is not None else None
    rows = []
    for key, metric, unit, target, bound in _ROWS:
        value = ours[key]
        limit = float(d + 15 if bound == "D+15" else bound or "nan")
        judged = d == 20 and bool(target)
        rows.append(
            Row(
                f"7 order path D={d}",
                metric,
                value,
                base[key] if base is not None else None,
                unit=unit,
                better="" if unit in ("req", "conn", "weight") else "lower",  # counts: no ratio
                target=target if judged else "",
                met=(value <= limit) if judged else None,
            )
        )
    return rows


def _data(run: PathRun) -> dict[str, Any]:
    def fields(x: Sample) -> dict[str, Any]:
        return x.__dict__.copy()

    return {
        "steady": [fields(x) for x in run.steady],
        "idle": [fields(x) for x in run.idle],
        "restart": fields(run.restart) if run.restart else None,
        "connections": run.connections,
        "restart_ready_ms": run.restart_ready_ms,
    }


async def scenario_order_path(ctx: Ctx) -> ScenarioReport:
    s = ctx.sizes
    rep = ScenarioReport(
        "7", "Order path (testnet mode, fake exchange over TLS holding every answer D ms)"
    )
    await ctx.fresh(True)
    root = ROOT
    cert = make_cert(ctx.workdir)
    base_dir = Path(tempfile.mkdtemp(prefix="apply-layer-base-"))
    try:
        base = export_base(root, ctx.order_path_base, base_dir) if s.path_old else None
        for hold in s.path_delays:
            new = await run_path(ctx, "project", hold, cert, None)
            old = await run_path(ctx, "base", hold, cert, str(base_dir / "src")) if base else None
            rep.rows += _rows(new, old)
            rep.data[f"D{hold}"] = {"project": _data(new), "base": _data(old) if old else None}
            for run in (new, old):
                if run is None:
                    continue
                statuses = {x.status for x in [*run.steady, *run.idle]}
                rep.details.append(
                    f"D={hold} {run.label}: {len(run.steady)} steady + {len(run.idle)} after idle"
                    f" + 1 after restart, statuses {sorted(statuses)}, {run.connections}"
                    f" connections accepted in all; the restarted process was ready after"
                    f" {run.restart_ready_ms:.0f} ms (not in the row: the plan follows it)"
                )
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(base_dir)
    where = f"main's code at {base}" if base else "not run"
    rep.details.append(
        f"middle column: today's order path = {where} (git archive of src, on PYTHONPATH),"
        " the same bench and run"
    )
    rep.details.append(
        f"fake exchange: TLS (self-signed, made for the run), HTTP/1.1 keep-alive, every"
        f" answer held D ms; permit wait {PERMIT_WAIT_SEC * 1000:.0f} ms; idle gap"
        f" {s.path_idle_sec:g} s"
    )
    return rep
