"""The one logging setup: structlog in front, stdlib handlers behind.

Operators grep journald for ``[PERMIT_WAIT]``, so a marker line is the
event text itself: in ``console`` format the line *is* the marker line (no
level or timestamp prefix; journald stamps it), and in ``json`` format it is
the ``message`` field, written first. Other events render as
``level event key=value ...`` or as JSON with their fields.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from decimal import Decimal
from typing import IO, Any

import structlog
from pythonjsonlogger.json import JsonFormatter

LOGGER_NAME = "apply_layer"
PERMIT_WAIT = "[PERMIT_WAIT]"

# Attributes every LogRecord has; anything else on a record is an event field.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}


class ConsoleFormatter(logging.Formatter):
    """``[PERMIT_WAIT] ...`` lines verbatim; other lines ``level event k=v``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields = _fields(record)
        if fields.pop("marker", None):
            return message
        parts = [f"{record.levelname.lower():<7}", message]
        parts.extend(f"{key}={_console_value(value)}" for key, value in fields.items())
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _console_value(value: Any) -> str:
    text = str(value)
    return repr(text) if (" " in text or not text) else text


def setup_logging(level: str = "INFO", fmt: str = "console", stream: IO[str] | None = None) -> None:
    """Configure structlog and the ``apply_layer`` stdlib logger; safe to call again."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter(
            "%(message)s %(levelname)s %(name)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
            json_default=str,
        )
    else:
        formatter = ConsoleFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger(LOGGER_NAME)
    root.handlers = [handler]
    root.setLevel(level)
    root.propagate = False
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.format_exc_info,
            structlog.stdlib.render_to_log_kwargs,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = LOGGER_NAME) -> Any:
    """A structlog logger bound to the stdlib logger ``name``."""
    return structlog.get_logger(name)


def format_qty(value: Decimal | None) -> str:
    """A quantity as plain decimal text: no exponent, no float artefacts."""
    if value is None:
        return "none"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def permit_ok_line(plan_id: str, symbol: str, wait_ms: int, safe_qty: Decimal | None) -> str:
    return (
        f"{PERMIT_WAIT} OK plan={plan_id} symbol={symbol} wait_ms={wait_ms} "
        f"safe_qty={format_qty(safe_qty)}"
    )


def permit_block_line(
    plan_id: str, symbol: str, wait_ms: int, reason: str, ttls: Mapping[str, int]
) -> str:
    tail = "".join(f" {issuer}_ttl={ttl}" for issuer, ttl in ttls.items())
    return (
        f"{PERMIT_WAIT} BLOCK plan={plan_id} symbol={symbol} wait_ms={wait_ms} "
        f"reason={reason}{tail}"
    )
