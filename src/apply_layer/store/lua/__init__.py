"""The Lua scripts the daemon runs in Redis, one ``.lua`` file each.

Every script file starts with a header naming its KEYS and ARGV and its
reply, and says why it is one atomic step. Scripts that need a shared rule
get the file holding it prepended (:func:`source` with ``prelude``), so the
rule is written once: ``kill_switch.lua`` (``kill_on``) for the gate and the
lease's acquire script, ``lease.lua`` (``lease_held``, ``lease_release``) for
every script that fences on the symbol lease or releases it.

The scripts, who runs them, and what is prepended to each:

- ``gate.lua``: the permit gate (``gate.PermitGate``); ``kill_switch``, then
  the permit size limits as a line of constants from ``permits.py``.
- ``claim.lua``, ``record_attempt.lua``: the plan journal (``journal.py``);
  ``publish.lua``, ``publish_unjournalled.lua``: a plan's result
  (``results.py``); ``lease`` before ``publish`` (the release) and
  ``record_attempt`` (the fence).
- ``lease_acquire.lua`` (``kill_switch``, ``lease``), ``lease_renew.lua`` and
  ``lease_release.lua`` (``lease``): the symbol lease (``lease.py``).
- ``correct.lua``: a correcting result entry (``corrections.py``, called by
  ``results.py``'s publish); ``COOLDOWN_TTL_SEC`` from ``keys.py``, as for ``publish``.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files


def source(name: str, *, prelude: Sequence[str] = ()) -> str:
    """The text of ``lua/<name>.lua``, after the text of each ``prelude`` file.

    A prelude file defines local functions the script calls (``kill_on``,
    ``lease_held``); it is the script's own text once prepended, so the
    server runs one self-contained script. Whole-line comments (the headers)
    are left out: they are for the reader, and a script sent with ``EVAL``
    (the attempt record under ``APPLY_REDIS_WAIT_REPLICAS``) is sent in full
    on every call.
    """
    return "".join(_read(part) for part in (*prelude, name))


def _read(name: str) -> str:
    text = files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return "".join(
        line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("--")
    )
