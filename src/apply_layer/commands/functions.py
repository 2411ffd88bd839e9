"""``apply-layer functions``: the Redis function library this version runs, for an admin.

The daemon's Redis user may call the library's functions but not load them
(``store/functions.py``, issue 21), so an admin loads it once per version::

    apply-layer functions | redis-cli --user ADMIN --askpass -x FUNCTION LOAD

``--name`` prints only its name (``apply_layer_<version>``), to check for it
(``FUNCTION LIST LIBRARYNAME``) or to delete an older one after an upgrade.
Nothing here connects to Redis: the text is this installation's own.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from apply_layer.settings import Settings
from apply_layer.store.functions import LIBRARY


async def cmd_functions(settings: Settings, args: argparse.Namespace) -> int:
    sys.stdout.write(LIBRARY.name + "\n" if args.name else LIBRARY.code)
    return 0


def register(sub: Any) -> None:
    functions = sub.add_parser(
        "functions",
        help="print the Redis function library to load (FUNCTION LOAD, by an admin)",
    )
    functions.add_argument("--name", action="store_true", help="print only the library's name")
    functions.set_defaults(func=cmd_functions)
