"""``apply-layer demo``: the whole flow, on an embedded or a given Redis."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
import redis as sync_redis

from apply_layer.commands import main
from apply_layer.core import keys as K
from apply_layer.ops.embedded_redis import EmbeddedRedis


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("APPLY_"):
            monkeypatch.delenv(name)


def test_demo_on_an_embedded_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "demo.log"
    code = main(["demo", "--plans", "40", "--rate", "200", "--seed", "7", "--log-file", str(log)])
    out = capsys.readouterr().out
    assert code == 0, out
    ok = int(re.search(r"OK (\d+)", out).group(1))  # type: ignore[union-attr]
    block = int(re.search(r"BLOCK (\d+)", out).group(1))  # type: ignore[union-attr]
    assert ok + block == 40
    assert "wait_ms" in out and "p99" in out and "orders placed (paper)" in out
    markers = [line for line in log.read_text().splitlines() if line.startswith("[PERMIT_WAIT]")]
    assert len(markers) == 40  # exactly one line per decision
    assert sum(line.startswith("[PERMIT_WAIT] OK") for line in markers) == ok
    port = int(re.search(r"127\.0\.0\.1:(\d+) \(removed after\)", out).group(1))  # type: ignore[union-attr]
    with pytest.raises(ConnectionRefusedError):  # the embedded server is gone
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_demo_refuses_a_redis_that_holds_real_streams(
    redis_server: EmbeddedRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = redis_server.url.removesuffix("/0") + "/9"
    client = sync_redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    client.xadd(K.PLAN_STREAM, {"plan_id": "real"})
    try:
        assert main(["demo", "--redis-url", url, "--log-file", str(tmp_path / "d.log")]) == 1
        assert "already holds" in capsys.readouterr().err
        client.flushdb()
        args = ["demo", "--redis-url", url, "--plans", "10", "--rate", "100"]
        assert main([*args, "--log-file", str(tmp_path / "d.log")]) == 0
        assert client.xlen(K.RESULT_STREAM) == 10
    finally:
        client.flushdb()
        client.close()


@pytest.mark.parametrize(
    "bad",
    [["--late-ratio", "2"], ["--p33-delay-ms", "300-20"], ["--plans", "0"], ["--rate", "x"]],
)
def test_bad_demo_arguments_exit_2(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", *bad])
    assert info.value.code == 2


def test_demo_with_an_unreachable_redis_says_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from apply_layer.ops.embedded_redis import free_port

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/3"
    assert main(["demo", "--redis-url", url, "--log-file", str(tmp_path / "d.log")]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Redis at redis://:***@127.0.0.1" in err
    assert "hunter2" not in err and "Traceback" not in err
