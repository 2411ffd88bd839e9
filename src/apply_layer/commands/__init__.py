"""The ``apply-layer`` command line: one module per subcommand, and this dispatcher.

Each module in this package is named after its subcommand (``dedupe-clear`` is
``dedupe_clear``) and has a ``register(subparsers)`` that adds its parser and
sets ``func``, a coroutine ``(settings, args) -> exit status``. The dispatcher
loads the settings once, sets up logging once, and maps the errors every
command shares to an exit status: 0 ok, 1 failed (``CommandError``, Redis
unreachable), 2 usage or configuration (docs/CONTRACT.md section 6).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from redis.exceptions import RedisError

from apply_layer import __version__
from apply_layer.core.errors import CommandError, ConfigError, SettingsError
from apply_layer.logs import setup_logging
from apply_layer.settings import Settings, load_settings
from apply_layer.store.connection import redact_url

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

# Options whose value may start with "-": ``--since -30m`` is journalctl's own
# spelling, printed in the runbook and the alerts. argparse takes "-30m" for an
# option and stops with "expected one argument" (exit 2), so main() joins the
# pair into ``--since=-30m`` before parsing, which argparse reads as a value.
DASH_VALUE_OPTIONS = frozenset({"--since"})


Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def _registrations() -> list[Callable[[Any], None]]:
    """Each command module's ``register(subparsers)``; one line per command module."""
    from apply_layer.commands import (
        check,
        dedupe_clear,
        demo,
        functions,
        permits,
        run,
        sign_permit,
        smoke,
        stats,
    )

    return [
        run.register,
        check.register,
        demo.register,
        permits.register,
        stats.register,
        dedupe_clear.register,
        smoke.register,
        sign_permit.register,
        functions.register,
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apply-layer", description="The apply layer: atomic permit gate and executor."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--env-file", help="read APPLY_* settings from this file too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _registrations():
        register(sub)
    return parser


def join_dash_values(argv: Sequence[str]) -> list[str]:
    """``--since -30m`` -> ``--since=-30m`` (see ``DASH_VALUE_OPTIONS``); nothing else changes.

    Only a value that does not look like one of our long options is joined
    (``--since --json`` stays a usage error), and nothing after ``--``.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return out + list(argv[i:])
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if word in DASH_VALUE_OPTIONS and nxt and nxt.startswith("-") and not nxt.startswith("--"):
            out.append(f"{word}={nxt}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        settings = load_settings(args.env_file)
    except SettingsError as exc:
        print(f"apply-layer: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_level, settings.log_format)
    func: Command = args.func
    try:
        return asyncio.run(func(settings, args))
    except ConfigError as exc:
        print(f"apply-layer: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"apply-layer: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:  # `apply-layer stats | head`: the reader left, nothing failed
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
        return EXIT_OK
    except (RedisError, OSError) as exc:
        where = (
            f"service {settings.redis_sentinel_service!r} via sentinels "
            + ",".join(settings.redis_sentinels)
            if settings.redis_sentinels
            else redact_url(settings.redis_url)
        )
        print(f"apply-layer: cannot reach Redis at {where}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
