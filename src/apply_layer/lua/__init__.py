"""The Lua scripts the daemon runs in Redis, one ``.lua`` file each.

Every file starts with a header naming its KEYS and ARGV and its reply.
Scripts that need a shared rule get it prepended (:func:`source` with
``prelude``), so the rule is written once (``kill_switch.lua``).
"""

from __future__ import annotations

from importlib.resources import files


def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
