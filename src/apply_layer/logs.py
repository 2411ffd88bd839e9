"""The one logging setup: structlog in front, stdlib handlers behind.

Operators grep journald for ``[PERMIT_WAIT]``, so a marker line is the
event text itself: in ``console`` format the line *is* the marker line (no
level or timestamp prefix; journald stamps it), and in ``json`` format it is
the ``message`` field, written first. Other events render as
``level event key=value ...`` or as JSON with their fields.

No value reaches a log line with a control character in it (issue 21,
finding 6): a consumer name, a plan field or an exception message holding a
newline, a carriage return, ESC, another C0 or C1 control, or a Unicode line
or paragraph separator would otherwise start a line of its own (a forged
``[PERMIT_WAIT] OK`` that ``stats`` counted) or redraw the operator's
terminal. :func:`escape_controls` writes each such character as its Python
escape (``\\n``, ``\\x1b``, ``\\u2028``) in both formats, and a console record
is always exactly one line: its traceback, if any, is the last field.

The marker line's text and the escaping are pure and live in
``core/log_format.py`` (imported from there, not re-exported); this module is
the setup only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import IO, Any

import structlog
from pythonjsonlogger.json import JsonFormatter

# The pure parts (the marker line's format, the escaping) are core/log_format's.
from apply_layer.core.log_format import escape_controls

LOGGER_NAME = "apply_layer"

# Attributes every LogRecord has; anything else on a record is an event field.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}


class ConsoleFormatter(logging.Formatter):
    """``[PERMIT_WAIT] ...`` lines as they are; other lines ``level event k=v``.

    Each record is one line, control characters escaped (module docstring).
    """

    def format(self, record: logging.LogRecord) -> str:
        message = escape_controls(record.getMessage())
        fields = _fields(record)
        if fields.pop("marker", None):
            return message
        parts = [f"{record.levelname.lower():<7}", message]
        parts.extend(
            f"{escape_controls(key)}={_console_value(value)}" for key, value in fields.items()
        )
        if record.exc_info:  # on this line: its message is anybody's text
            parts.append(f"traceback={_console_value(self.formatException(record.exc_info))}")
        if record.stack_info:
            parts.append(f"stack={_console_value(self.formatStack(record.stack_info))}")
        return " ".join(parts)


def _console_value(value: Any) -> str:
    """A value as it is when it is one plain word, else quoted with its escapes (``repr``)."""
    text = str(value)
    return text if text and " " not in text and text.isprintable() else repr(text)


class _JsonFormatter(JsonFormatter):
    """JSON lines whose string values carry no control character even once decoded."""

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {escape_controls(str(key)): _escaped(value) for key, value in log_data.items()}


def _escaped(value: Any) -> Any:
    """JSON's own types as they are (strings escaped); anything else as its escaped text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {escape_controls(str(k)): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return escape_controls(str(value))  # what json_default=str would write, escaped


def setup_logging(level: str = "INFO", fmt: str = "console", stream: IO[str] | None = None) -> None:
    """Configure structlog and the ``apply_layer`` stdlib logger; safe to call again."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = _JsonFormatter(
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
        processors=list(_PROCESSORS),
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=False,
    )


# The chain setup_logging installs; write_marker_line takes its short cut only under it
# (compared by content: structlog.testing.capture_logs replaces a chain in place).
_PROCESSORS: tuple[Any, ...] = (
    structlog.contextvars.merge_contextvars,
    structlog.processors.format_exc_info,
    structlog.stdlib.render_to_log_kwargs,
)
_STDLIB = logging.getLogger(LOGGER_NAME)


def write_marker_line(level: int, line: str, fields: dict[str, Any]) -> None:
    """Write a ``[PERMIT_WAIT]`` line now, as ``get_logger().info(line, **fields)`` would.

    The gate writes this line before it returns its decision, once per plan,
    usually after the process sat idle: run cold, structlog's lazy proxy,
    its processor chain and stdlib's ``findCaller`` (a stack walk) cost more
    than the line itself (docs/PERFORMANCE.md, "What bounds the missed
    targets"). Under the chain :func:`setup_logging` installs, the record
    that chain would hand to the stdlib logger is built here directly: the
    same message, the same ``extra`` fields in the same order (the call's,
    then any bound context variable not among them), the same logger and
    handlers, so the same bytes (tests/test_logs.py). Only the
    record's source location, which neither format writes, is left unknown.
    Under any other configuration (``structlog.testing.capture_logs``, a
    caller's own ``structlog.configure``) it goes through structlog.
    """
    if tuple(structlog.get_config()["processors"]) != _PROCESSORS:
        structlog.get_logger(LOGGER_NAME).log(level, line, **fields)
        return
    if not _STDLIB.isEnabledFor(level):
        return
    extra = dict(fields)
    for name, value in structlog.contextvars.get_contextvars().items():
        extra.setdefault(name, value)
    record = _STDLIB.makeRecord(
        LOGGER_NAME, level, "(unknown file)", 0, line, (), None, extra=extra
    )
    _STDLIB.handle(record)


def get_logger(name: str = LOGGER_NAME) -> Any:
    """A structlog logger bound to the stdlib logger ``name``."""
    return structlog.get_logger(name)
