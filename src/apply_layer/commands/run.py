"""``apply-layer run``: the daemon in the foreground (what systemd starts)."""

from __future__ import annotations

import argparse
from typing import Any

from apply_layer.settings import Settings


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from apply_layer.daemon.service import ApplyService

    return await ApplyService(settings).run()


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="the daemon, in the foreground (for systemd)")
    run.set_defaults(func=cmd_run)
