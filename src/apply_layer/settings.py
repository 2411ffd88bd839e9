"""The one settings object: every ``APPLY_*`` variable of docs/CONTRACT.md section 4.

Values come from the environment (as systemd's ``EnvironmentFile=`` gives
them) and optionally from an env file. A bad value is fatal at start: the
service never runs half-configured. :func:`load_settings` turns pydantic's
errors into one line that names the variable, which the CLI prints before it
exits with status 2.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from apply_layer.core.decision import (
    DEFAULT_JOURNAL_TTL_SEC,
    DEFAULT_PERMIT_STEP_MS,
    DEFAULT_PERMIT_WAIT_MS,
    DEFAULT_REQUIRED_PERMITS,
)
from apply_layer.core.errors import SettingsError
from apply_layer.core.keys import ISSUERS
from apply_layer.core.plans import SYMBOL_RE
from apply_layer.core.signing import Mode as SigningMode
from apply_layer.core.signing import parse_modes
from apply_layer.store.connection import url_problem

ENV_PREFIX = "APPLY_"

Mode = Literal["dry_run", "paper", "testnet"]
LogFormat = Literal["console", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
KeyspaceEvents = Literal["detect", "enable", "off"]


# Where orders may go: Binance's futures testnet and demo hosts, or a fake exchange on
# this machine (tests, the smoke's own checks). The one rule for the daemon in testnet
# mode (checked when the settings load) and for ``apply-layer smoke``.
TESTNET_HOSTS = frozenset({"testnet.binancefuture.com", "demo-fapi.binance.com"})
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def not_testnet(url: str) -> str | None:
    """Why ``url`` is not a testnet (or local fake) exchange, in one line; None if it is.

    Only the host is named, never the whole URL (it could carry credentials),
    and it is quoted with ``repr`` so that nothing in it can break the line.
    """
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    if host in TESTNET_HOSTS | LOCAL_HOSTS:
        return None
    return (
        f"APPLY_BINANCE_BASE_URL: host {host!r} is not the testnet: orders go only to "
        f"{', '.join(sorted(TESTNET_HOSTS))} (or a fake exchange on this machine)"
    )


def _default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Runtime configuration. Field ``x`` is read from ``APPLY_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        # `APPLY_X=` (empty) means "not set": the env file can list every
        # variable, secrets included, without overriding a default or an alias.
        env_ignore_empty=True,
    )

    # repr=False: the URL may hold the password; it never appears in a repr.
    redis_url: str = Field(default="redis://localhost:6379/0", repr=False)
    # Sentinel: host:port of each sentinel; the primary of the service is asked of them.
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    redis_sentinel_service: str = Field(default="", pattern=r"^[A-Za-z0-9_.:-]{0,64}$")
    redis_sentinel_password: SecretStr | None = None
    redis_wait_replicas: int = Field(default=0, ge=0, le=16)
    mode: Mode = "dry_run"
    allowlist: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["BTCUSDT"])
    poll_sec: float = Field(default=5.0, gt=0, le=60)
    permit_wait_ms: int = Field(default=DEFAULT_PERMIT_WAIT_MS, ge=0, le=60_000)
    permit_step_ms: int = Field(default=DEFAULT_PERMIT_STEP_MS, ge=1, le=10_000)
    required_permits: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_REQUIRED_PERMITS)
    )
    plan_max_age_sec: float = Field(default=60.0, gt=0)
    dedupe_ttl_sec: int = Field(default=300, ge=1)
    journal_ttl_sec: int = Field(default=DEFAULT_JOURNAL_TTL_SEC, ge=60)
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "console"
    metrics_port: int = Field(default=8043, ge=0, le=65535)
    metrics_bind: str = "127.0.0.1"
    kill_switch: bool = False
    keyspace_events: KeyspaceEvents = "detect"
    # The gate's lane (store/gate_lane.py): permit events answered from the socket's
    # callback. Off: the watcher wakes the gate's task, which calls (as before 0.x).
    gate_lane: bool = True
    max_in_flight: int = Field(default=64, ge=1, le=10_000)
    claim_idle_sec: float = Field(default=30.0, ge=1)
    lease_ms: int = Field(default=15_000, ge=1000, le=600_000)
    binance_base_url: str = "https://testnet.binancefuture.com"
    binance_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("APPLY_BINANCE_API_KEY", "BINANCE_TESTNET_API_KEY"),
    )
    binance_api_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("APPLY_BINANCE_API_SECRET", "BINANCE_TESTNET_API_SECRET"),
    )
    binance_recv_window_ms: int = Field(default=5000, ge=1, le=60_000)
    binance_http_timeout_sec: float = Field(default=10.0, gt=0, le=60)
    # Idle connections to Binance kept this long for reuse (docs/BINANCE.md, "Connections").
    binance_keepalive_sec: float = Field(default=150.0, ge=0, le=3600)
    # What must outlive a Redis loss (the Redis identity last seen, store/identity.py);
    # unset: systemd's $STATE_DIRECTORY (StateDirectory= in the unit), else nothing is kept.
    state_dir: Path | None = None
    # Signed permits (signing.py): off, warn or require, for all or per issuer.
    permit_signing: str = "off"
    # The issuers' keys; unset: systemd's credential $CREDENTIALS_DIRECTORY/permit-keys.
    permit_keys_file: Path | None = None
    consumer_group: str = Field(default="apply_layer", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    consumer_name: str = Field(
        default_factory=_default_consumer_name, pattern=r"^[A-Za-z0-9_.:-]{1,128}$"
    )

    @field_validator("mode", "log_level", "log_format", "keyspace_events", mode="before")
    @classmethod
    def _normalise_case(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value.upper() if info.field_name == "log_level" else value.lower()
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("metrics_bind")
    @classmethod
    def _check_bind(cls, value: str) -> str:
        value = value.strip()
        if value == "localhost":
            return value
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                "must be an IP address of this host: 127.0.0.1, ::1, 0.0.0.0 (every IPv4 "
                "address), :: (every address) or one interface's address"
            ) from None
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _parse_sentinels(cls, value: Any) -> Any:
        addresses = _split_csv(value)
        if isinstance(addresses, list):
            for address in addresses:
                host, sep, port = str(address).rpartition(":")
                if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
                    raise ValueError(f"{address!r} is not host:port")
        return addresses

    @model_validator(mode="after")
    def _sentinel_needs_service(self) -> Settings:
        if self.redis_sentinels and not self.redis_sentinel_service:
            raise ValueError(
                "APPLY_REDIS_SENTINEL_SERVICE: needed with APPLY_REDIS_SENTINELS "
                "(the name the sentinels monitor, e.g. quantum)"
            )
        if self.redis_sentinels and self.redis_url.startswith("unix://"):
            raise ValueError(
                "APPLY_REDIS_URL: a unix:// socket cannot be used with APPLY_REDIS_SENTINELS"
            )
        return self

    @model_validator(mode="after")
    def _testnet_only(self) -> Settings:
        """No mainnet by mistake: testnet mode sends real orders to this URL's host."""
        problem = not_testnet(self.binance_base_url) if self.mode == "testnet" else None
        if problem:
            raise ValueError(problem)
        return self

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``APPLY_REDIS_SENTINELS`` as (host, port) pairs."""
        pairs = []
        for address in self.redis_sentinels:
            host, _, port = address.rpartition(":")
            pairs.append((host.strip("[]"), int(port)))
        return pairs

    @field_validator("binance_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("permit_signing")
    @classmethod
    def _check_signing(cls, value: str) -> str:
        modes = parse_modes(value)
        on = [f"{issuer}={mode}" for issuer, mode in modes.items() if mode != "off"]
        return ",".join(on) or "off"

    @property
    def signing_modes(self) -> dict[str, SigningMode]:
        """Each required issuer's signing mode (``off`` unless APPLY_PERMIT_SIGNING says)."""
        modes = parse_modes(self.permit_signing)
        return {name: modes[name] for name in self.required_permits}

    @field_validator("allowlist", mode="before")
    @classmethod
    def _parse_allowlist(cls, value: Any) -> Any:
        symbols = _split_csv(value)
        if isinstance(symbols, list):
            if not symbols:  # every plan would end SKIPPED symbol_not_allowed, silently
                raise ValueError("names no symbol: give at least one, like BTCUSDT")
            for symbol in symbols:
                if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
                    raise ValueError(f"{symbol!r} is not a symbol like BTCUSDT")
        return symbols

    @field_validator("required_permits", mode="before")
    @classmethod
    def _parse_required(cls, value: Any) -> Any:
        names = _split_csv(value)
        if not isinstance(names, list):
            return names
        names = [str(name).lower() for name in names]
        unknown = [name for name in names if name not in ISSUERS]
        if unknown:
            raise ValueError(f"unknown issuer {unknown[0]!r} (known: {', '.join(ISSUERS)})")
        if len(set(names)) != len(names):
            raise ValueError("an issuer is listed twice")
        if "p33" not in names:
            # Without P3.3 there is no safe_qty, and we never guess a quantity.
            raise ValueError("must include p33: its safe_qty is the only source of order size")
        return names


def _field_env_name(loc: tuple[int | str, ...]) -> str:
    """The variable the operator sets: ``APPLY_`` + the field, or the alias it came from."""
    if not loc:
        return "settings"
    name = str(loc[0])
    if name in Settings.model_fields:
        return ENV_PREFIX + name.upper()
    return name.upper()  # an alias such as BINANCE_TESTNET_API_KEY, already a variable name


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings or raise :class:`SettingsError` naming the variable."""
    if env_file is not None:
        path = Path(env_file)
        if not path.is_file():
            raise SettingsError(f"env file {path}: not found")
        try:
            path.read_bytes()
        except OSError as exc:
            raise SettingsError(f"env file {path}: {exc.strerror}") from None
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if not first["loc"]:  # a rule across settings: its message names the variable
            raise SettingsError(message) from None
        raise SettingsError(f"{_field_env_name(first['loc'])}: {message}") from None


def unknown_env_vars(environ: dict[str, str] | None = None) -> list[str]:
    """``APPLY_*`` variables that no setting reads: usually a typo worth a warning."""
    env = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
