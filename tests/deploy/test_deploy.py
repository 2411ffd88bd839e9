"""Deployment artifacts: env file, systemd unit, install.sh and rollback.sh.

The install tests build one real release venv per module (``pip install`` of
this project and its dependencies, ~8 s with a warm pip cache; it needs the
package index or pip's cache) into a temporary ``--root``. Every test that
changes the tree works on its own copy of it; a second release is a
pre-built stand-in (a marker and a stub ``bin/apply-layer``), which is all
install.sh's switching and rollback.sh ever look at. systemctl is either not
called (``--root`` implies ``--no-systemctl``) or a recording fake named by
``SYSTEMCTL``; no user is created (``--root`` skips it).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from dotenv import dotenv_values

from apply_layer.settings import Settings, load_settings

# Its module-scoped fixture builds once per worker: keep its tests on one (pytest-xdist).
pytestmark = pytest.mark.xdist_group("deploy")

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "quantum-apply-layer.service"
ENV_TEMPLATE = REPO / "deploy" / "env" / "apply-layer.env"
INSTALL = REPO / "scripts" / "install.sh"
ROLLBACK = REPO / "scripts" / "rollback.sh"

PREFIX = Path("opt/quantum-apply-layer")
ENV_DST = Path("etc/quantum/apply-layer.env")
UNIT_DST = Path("etc/systemd/system/quantum-apply-layer.service")
EXEC_START = "/opt/quantum-apply-layer/current/bin/apply-layer run"
MAX_EXPOSURE = 1.5
SECRETS = {"APPLY_BINANCE_API_KEY", "APPLY_BINANCE_API_SECRET", "APPLY_REDIS_SENTINEL_PASSWORD"}
SETTING_LINE = re.compile(r"^(#?)(APPLY_[A-Z0-9_]+)=(.*)$")

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)


# --- env file -------------------------------------------------------------------------


def _setting_lines() -> list[tuple[int, bool, str, str]]:
    """(line index, active, name, value) of every ``APPLY_X=`` or ``#APPLY_X=`` line."""
    found = []
    for i, line in enumerate(ENV_TEMPLATE.read_text().splitlines()):
        m = SETTING_LINE.match(line)
        if m:
            found.append((i, m.group(1) == "", m.group(2), m.group(3)))
    return found


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("APPLY_", "BINANCE_")):
            monkeypatch.delenv(name)


def test_env_file_names_every_setting_exactly_once() -> None:
    names = Counter(name for _, _, name, _ in _setting_lines())
    expected = {"APPLY_" + field.upper() for field in Settings.model_fields}
    assert set(names) == expected
    assert [n for n, count in names.items() if count != 1] == []


def test_env_file_documents_default_and_allowed_values_of_each_setting() -> None:
    lines = ENV_TEMPLATE.read_text().splitlines()
    for index, _, name, _ in _setting_lines():
        block = []
        i = index - 1
        while i >= 0 and lines[i].startswith("#"):  # comments and fellow settings above
            block.append(lines[i])
            i -= 1
        text = "\n".join(block)
        assert "Default:" in text, f"{name}: no 'Default:' in the comment above it"
        assert "Allowed:" in text, f"{name}: no 'Allowed:' in the comment above it"


def test_env_file_format_reads_the_same_in_systemd_and_dotenv() -> None:
    active = {}
    for raw in ENV_TEMPLATE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = SETTING_LINE.match(raw)
        assert m, f"not KEY=value: {raw!r}"
        value = m.group(3)
        # systemd has no inline comments, and quoting rules differ: keep values plain.
        assert "#" not in value and not re.search(r"\s", value), raw
        assert not value.startswith(("'", '"')), raw
        active[m.group(2)] = value
    assert dotenv_values(ENV_TEMPLATE) == active


@pytest.mark.usefixtures("clean_env")
def test_env_file_loads_into_the_defaults_with_secrets_unset() -> None:
    from_file = load_settings(ENV_TEMPLATE)
    assert from_file.model_dump() == load_settings().model_dump()
    assert from_file.mode == "dry_run"
    assert from_file.binance_api_key is None
    assert from_file.binance_api_secret is None


def test_secrets_are_present_but_unset_and_the_old_names_are_explained() -> None:
    lines = {name: (active, value) for _, active, name, value in _setting_lines()}
    # Empty means unset (env_ignore_empty): an empty APPLY_ secret does not
    # shadow BINANCE_TESTNET_API_*, and the consumer name keeps its default.
    for name in (*SECRETS, "APPLY_CONSUMER_NAME"):
        assert lines[name] == (True, ""), name
    assert not [name for name, (active, _) in lines.items() if not active]
    text = ENV_TEMPLATE.read_text()
    assert "BINANCE_TESTNET_API_KEY" in text and "BINANCE_TESTNET_API_SECRET" in text


# --- systemd unit ---------------------------------------------------------------------


def _unit_directives() -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (systemd allows repeated keys)."""
    directives: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        directives.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return directives


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Service.Type", "notify"),
        ("Service.NotifyAccess", "main"),
        ("Service.WatchdogSec", "30"),
        ("Service.Restart", "on-failure"),
        ("Service.RestartPreventExitStatus", "2"),  # apply-layer's "invalid configuration"
        ("Service.KillMode", "mixed"),
        ("Service.User", "quantum-apply"),
        ("Service.Group", "quantum-apply"),
        ("Service.EnvironmentFile", "/etc/quantum/apply-layer.env"),
        ("Service.ExecStart", EXEC_START),
        ("Service.NoNewPrivileges", "yes"),
        ("Service.ProtectSystem", "strict"),
        ("Service.StateDirectory", "quantum-apply-layer"),  # the kept Redis identity
        ("Service.ProtectHome", "yes"),
        ("Service.PrivateTmp", "yes"),
        ("Service.MemoryDenyWriteExecute", "yes"),
        ("Service.CapabilityBoundingSet", ""),
        ("Service.AmbientCapabilities", ""),
        ("Service.UMask", "0077"),
        ("Service.RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("Service.SystemCallArchitectures", "native"),
        ("Install.WantedBy", "multi-user.target"),
    ],
)
def test_unit_has_directive(key: str, value: str) -> None:
    assert _unit_directives().get(key) == [value]


def test_unit_filters_system_calls_and_limits_resources() -> None:
    d = _unit_directives()
    assert d["Service.SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    for key in ("MemoryMax", "MemoryHigh", "TasksMax", "LimitNOFILE", "RestartSec"):
        assert f"Service.{key}" in d, key
    assert "Unit.StartLimitBurst" in d and "Unit.StartLimitIntervalSec" in d


def test_unit_stop_timeout_outlasts_the_drain() -> None:
    from apply_layer.daemon.service import DRAIN_TIMEOUT_SEC  # renaming it must fail here, not skip

    stop = float(_unit_directives()["Service.TimeoutStopSec"][0])
    assert stop >= DRAIN_TIMEOUT_SEC + 2, "SIGKILL would cut the drain short"


def _verify(unit_text: str, tmp_path: Path) -> str:
    """systemd-analyze verify on a copy whose ExecStart binary exists on this machine."""
    assert SYSTEMD_ANALYZE is not None
    stand_in = Path(sys.executable).with_name("apply-layer")
    binary = str(stand_in) if stand_in.exists() else shutil.which("true") or "/bin/true"
    copy = tmp_path / UNIT.name
    copy.write_text(unit_text.replace(EXEC_START, f"{binary} run"))
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if str(copy) in line or UNIT.name in line
    ]
    assert proc.returncode == 0 or ours, proc.stdout + proc.stderr
    return "\n".join(ours)


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert EXEC_START in UNIT.read_text()
    assert _verify(UNIT.read_text(), tmp_path) == ""


@needs_systemd_analyze
def test_systemd_analyze_verify_would_catch_a_typo(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("ProtectClock=yes", "ProtectClok=yes")
    assert "ProtectClok" in _verify(broken, tmp_path)


@needs_systemd_analyze
def test_systemd_analyze_security_exposure_is_low() -> None:
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, proc.stdout


MDWE_PROBE = r"""
import asyncio, ctypes, mmap, ssl, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3+)
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X mapping still allowed: MDWE not in force")
except OSError:
    pass
import httpx, prometheus_client, pydantic, redis.asyncio, structlog
import apply_layer.commands
ssl.create_default_context()
async def main():
    async with httpx.AsyncClient() as client:
        try:
            await client.get("http://127.0.0.1:9/", timeout=2)
        except httpx.HTTPError:
            pass
asyncio.run(main())
assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)() == 7
print("ok")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_MDWE is Linux-only")
def test_python_and_dependencies_run_without_writable_executable_memory() -> None:
    """What MemoryDenyWriteExecute=yes demands, checked with the kernel's PR_SET_MDWE."""
    proc = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=60
    )
    if proc.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


# --- scripts --------------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    output: str


def _run(script: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    full_env = {k: v for k, v in os.environ.items() if k != "SYSTEMCTL"}
    full_env.update(env or {})
    proc = subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )
    return Run(proc.returncode, proc.stdout + proc.stderr)


def _install(root: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    return _run(INSTALL, "--root", str(root), "--python", sys.executable, *args, env=env)


def _rollback(root: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    return _run(ROLLBACK, "--root", str(root), *args, env=env)


def _base(root: Path) -> Path:
    return root / PREFIX


def _link(root: Path, name: str) -> str | None:
    path = _base(root) / name
    return os.readlink(path) if path.is_symlink() else None


def _fake_release(root: Path, name: str) -> Path:
    """A complete-looking release: install.sh reuses it, rollback.sh accepts it."""
    release = _base(root) / "releases" / name
    (release / "bin").mkdir(parents=True)
    exe = release / "bin" / "apply-layer"
    exe.write_text(f"#!/bin/sh\necho apply-layer {name}\n")
    exe.chmod(0o755)
    share = release / "share" / "quantum-apply-layer"
    share.mkdir(parents=True)
    (share / UNIT.name).write_text(UNIT.read_text() + f"# unit of release {name}\n")
    (release / ".release").write_text(f"version={name}\n")
    return release


@pytest.fixture
def fake_systemctl(tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    """A recording systemctl: (env, call log, 'is active' flag file)."""
    log, active = tmp_path / "systemctl.log", tmp_path / "active"
    script = tmp_path / "systemctl"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'case "$1" in\n'
        f'  is-active) [ -f "{active}" ] && exit 0; exit 3 ;;\n'
        f'  restart) touch "{active}" ;;\n'
        "esac\n"
        "exit 0\n"
    )
    script.chmod(0o755)
    return {"SYSTEMCTL": str(script)}, log, active


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def built_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real install of release 1.0.0 (a venv with this project) under a temp root."""
    root = tmp_path_factory.mktemp("built-root")
    result = _install(root, "--version", "1.0.0")
    if result.returncode != 0:
        pytest.fail(f"install.sh failed:\n{result.output}")
    (root / "install-output.txt").write_text(result.output)
    return root


@pytest.fixture
def root(built_root: Path, tmp_path: Path) -> Path:
    """A private copy of the built tree, free to change."""
    copy = tmp_path / "root"
    shutil.copytree(built_root, copy, symlinks=True)
    return copy


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean() -> None:
    proc = subprocess.run(
        ["shellcheck", "-x", *map(str, sorted(INSTALL.parent.glob("*.sh")))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", [INSTALL, ROLLBACK], ids=["install", "rollback"])
def test_scripts_explain_themselves_and_refuse_unknown_options(script: Path) -> None:
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()
    helped = _run(script, "--help")
    assert helped.returncode == 0
    assert "--root" in helped.output and "--no-systemctl" in helped.output
    bad = _run(script, "--frobnicate")
    assert bad.returncode != 0 and "unknown argument: --frobnicate" in bad.output


def test_install_builds_a_release_venv_and_links_it(built_root: Path) -> None:
    base = _base(built_root)
    release = base / "releases" / "1.0.0"
    assert _link(built_root, "current") == "releases/1.0.0"
    assert _link(built_root, "previous") is None
    assert (release / "pyvenv.cfg").is_file()
    assert (release / ".release").read_text().startswith("version=1.0.0\n")
    # The unit's ExecStart resolves through `current` into the release venv.
    exe = built_root / EXEC_START.split()[0].lstrip("/")
    assert exe.resolve() == (release / "bin" / "apply-layer").resolve()
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("apply-layer "), version
    shared = release / "share" / "quantum-apply-layer"
    assert (shared / UNIT.name).read_text() == UNIT.read_text()
    assert (shared / ENV_TEMPLATE.name).read_text() == ENV_TEMPLATE.read_text()
    # The operator's kit, where the alerts' runbook_url points.
    for kit in ("docs/OPERATIONS.md", "deploy/prometheus/apply-layer.rules.yml"):
        assert (shared / Path(kit).name).read_text() == (REPO / kit).read_text()
    assert (shared / "apply-layer.json").is_file()
    acl = REPO / "deploy" / "redis" / "apply-layer.acl"
    assert (shared / acl.name).read_text() == acl.read_text()
    assert (shared / "SECURITY.md").exists()
    output = (built_root / "install-output.txt").read_text()
    assert "not creating user quantum-apply" in output


def test_install_puts_the_env_file_and_unit_where_the_unit_expects_them(built_root: Path) -> None:
    env = built_root / ENV_DST
    assert "/" + str(ENV_DST) == _unit_directives()["Service.EnvironmentFile"][0]
    assert env.read_text() == ENV_TEMPLATE.read_text()
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    unit = built_root / UNIT_DST
    assert unit.read_text() == UNIT.read_text()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644


def test_second_install_changes_nothing_and_keeps_the_operators_env(root: Path) -> None:
    env = root / ENV_DST
    env.write_text("APPLY_MODE=testnet\nAPPLY_BINANCE_API_KEY=operator-secret\n")
    marker = _base(root) / "releases" / "1.0.0" / ".release"
    before = marker.read_text()
    again = _install(root, "--version", "1.0.0")
    assert again.returncode == 0, again.output
    assert "already built" in again.output
    assert "current already points at releases/1.0.0" in again.output
    assert marker.read_text() == before  # not rebuilt
    assert env.read_text() == "APPLY_MODE=testnet\nAPPLY_BINANCE_API_KEY=operator-secret\n"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert "APPLY_REDIS_URL" in again.output  # told which settings the file lacks
    assert _link(root, "current") == "releases/1.0.0"
    assert _link(root, "previous") is None


def test_install_warns_about_a_readable_env_file_but_leaves_it(root: Path) -> None:
    env = root / ENV_DST
    env.chmod(0o644)
    result = _install(root, "--version", "1.0.0")
    assert result.returncode == 0, result.output
    assert "is mode 644" in result.output
    assert stat.S_IMODE(env.stat().st_mode) == 0o644


def test_install_saves_a_foreign_unit_before_replacing_it(root: Path) -> None:
    unit = root / UNIT_DST
    unit.write_text("[Service]\nExecStart=/usr/bin/python3 /root/quantum_trader/main.py\n")
    result = _install(root, "--version", "1.0.0")
    assert result.returncode == 0, result.output
    assert unit.read_text() == UNIT.read_text()
    backups = list((root / "var" / "backups").glob("quantum-apply-layer.service.*"))
    assert len(backups) == 1 and "quantum_trader" in backups[0].read_text()


def test_install_never_switches_to_a_release_that_does_not_run(root: Path) -> None:
    # A lock without the dependencies: the CLI cannot import, the smoke test must stop it.
    # (setuptools stays: the project itself must still build.)
    main_lock = (REPO / "requirements" / "main.txt").read_text()
    partial = root / "partial.txt"
    partial.write_text(main_lock[main_lock.index("setuptools==") :].split("\n    # via")[0] + "\n")
    result = _install(root, "--version", "2.0.0", "--lock", str(partial))
    assert result.returncode != 0
    assert "does not run; nothing was switched" in result.output
    assert not (_base(root) / "releases" / "2.0.0").exists()
    assert _link(root, "current") == "releases/1.0.0"


def test_install_takes_exactly_the_lock_and_records_it(built_root: Path) -> None:
    release = _base(built_root) / "releases" / "1.0.0"
    lock = REPO / "requirements" / "main.txt"
    pins = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+) ", lock.read_text(), re.M))
    listed = subprocess.run(
        [str(release / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    installed = dict(line.lower().split("==") for line in listed.split())
    installed.pop("pip")  # the venv's own
    assert installed.pop("quantum-apply-layer") == "0.1.0"
    assert {k.replace("_", "-"): v for k, v in installed.items()} == pins
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    assert f"lock={digest}\n" in (release / ".release").read_text()


def test_install_refuses_a_lock_file_that_is_not_there(root: Path) -> None:
    result = _install(root, "--version", "2.0.0", "--lock", str(root / "nope.txt"))
    assert result.returncode != 0 and "--lock" in result.output and "not found" in result.output
    assert not (_base(root) / "releases" / "2.0.0").exists()


def test_install_refuses_to_rebuild_the_current_release(root: Path) -> None:
    result = _install(root, "--version", "1.0.0", "--force")
    assert result.returncode != 0
    assert "cannot be rebuilt in place" in result.output
    assert _link(root, "current") == "releases/1.0.0"


def test_upgrade_records_previous_and_restarts_only_a_running_service(
    root: Path, fake_systemctl: tuple[dict[str, str], Path, Path]
) -> None:
    env, log, active = fake_systemctl
    _fake_release(root, "2.0.0")
    stopped = _install(root, "--version", "2.0.0", env=env)
    assert stopped.returncode == 0, stopped.output
    assert _link(root, "current") == "releases/2.0.0"
    assert _link(root, "previous") == "releases/1.0.0"
    assert _calls(log) == ["is-active --quiet quantum-apply-layer", "daemon-reload"]

    log.unlink()
    active.touch()
    _fake_release(root, "3.0.0")
    running = _install(root, "--version", "3.0.0", env=env)
    assert running.returncode == 0, running.output
    assert _link(root, "current") == "releases/3.0.0"
    assert _link(root, "previous") == "releases/2.0.0"
    assert "restart quantum-apply-layer" in _calls(log)

    log.unlink()
    held = _install(root, "--version", "3.0.0", "--no-restart", env=env)
    assert held.returncode == 0, held.output
    assert "restart quantum-apply-layer" not in _calls(log)
    assert _link(root, "previous") == "releases/2.0.0"  # a re-run moves nothing


def test_install_enable_enables_and_starts(
    root: Path, fake_systemctl: tuple[dict[str, str], Path, Path]
) -> None:
    env, log, _ = fake_systemctl
    result = _install(root, "--version", "1.0.0", "--enable", env=env)
    assert result.returncode == 0, result.output
    calls = _calls(log)
    assert "enable quantum-apply-layer" in calls and "restart quantum-apply-layer" in calls


def test_rollback_swaps_current_and_previous(
    root: Path, fake_systemctl: tuple[dict[str, str], Path, Path]
) -> None:
    env, log, active = fake_systemctl
    _fake_release(root, "2.0.0")
    assert _install(root, "--version", "2.0.0").returncode == 0
    (root / UNIT_DST).write_text("# whatever 2.0.0 installed\n")

    active.touch()
    back = _rollback(root, env=env)
    assert back.returncode == 0, back.output
    assert _link(root, "current") == "releases/1.0.0"
    assert _link(root, "previous") == "releases/2.0.0"
    # The unit of the release rolled back to is reinstalled, then systemd reloads.
    assert (root / UNIT_DST).read_text() == UNIT.read_text()
    assert _calls(log)[-3:] == [
        "daemon-reload",
        "restart quantum-apply-layer",
        "is-active --quiet quantum-apply-layer",
    ]

    forth = _rollback(root)  # a second rollback undoes the first
    assert forth.returncode == 0, forth.output
    assert _link(root, "current") == "releases/2.0.0"
    assert _link(root, "previous") == "releases/1.0.0"
    assert (root / UNIT_DST).read_text().endswith("# unit of release 2.0.0\n")

    listed = _rollback(root, "--list")
    assert "1.0.0 (previous)" in listed.output and "2.0.0 (current)" in listed.output
    to = _rollback(root, "--to", "1.0.0")
    assert to.returncode == 0, to.output
    assert _link(root, "current") == "releases/1.0.0"


def test_rollback_refuses_without_a_previous_release(root: Path) -> None:
    result = _rollback(root)
    assert result.returncode != 0
    assert "no previous release" in result.output
    assert _link(root, "current") == "releases/1.0.0"


def test_rollback_refuses_a_missing_or_half_built_release(root: Path) -> None:
    _fake_release(root, "2.0.0")
    assert _install(root, "--version", "2.0.0").returncode == 0
    (_base(root) / "releases" / "1.0.0" / ".release").unlink()
    result = _rollback(root)
    assert result.returncode != 0 and "not a complete release" in result.output
    assert _link(root, "current") == "releases/2.0.0"
    missing = _rollback(root, "--to", "9.9.9")
    assert missing.returncode != 0 and "not a complete release" in missing.output


def test_rollback_refuses_when_nothing_is_installed(tmp_path: Path) -> None:
    result = _rollback(tmp_path)
    assert result.returncode != 0 and "nothing installed" in result.output
