"""The issuers' signing keys: the key ring, and the file it is read from.

A key file (a systemd credential, never the environment) has one key per
line, ``<issuer> <key id> <secret as hex, at least 32 bytes>``; ``#`` starts
a comment. An issuer may have several keys: during a rotation both the old
and the new key id verify. Whoever can write the file can sign any permit and
whoever can read it can too, so it is refused unless it is private and
safely owned (:func:`file_problem`); and nothing read from it is ever echoed
in an error, since with the columns out of order any word may be the secret.
"""

from __future__ import annotations

import os
import stat
import string
from collections.abc import Mapping
from pathlib import Path

from apply_layer.core.errors import KeyFileError
from apply_layer.core.keys import ISSUERS
from apply_layer.core.signing import KEY_ID_RE, KeyRing

CREDENTIAL_NAME = "permit-keys"  # LoadCredential=permit-keys:/etc/quantum/permit-keys
MIN_KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 1 << 20  # a key file is a few lines; never read a huge one whole


def _looks_like_secret(word: str) -> bool:
    """A word that could be a key (hex, as long as the shortest key): never echoed."""
    return len(word) >= 2 * MIN_KEY_BYTES and all(c in string.hexdigits for c in word)


def parse_keys(text: str) -> KeyRing:
    """Read a key file's text; :class:`KeyFileError` names the line, never its contents.

    No word of the file is ever quoted in an error: with the columns out of
    order, any of them may be the secret.
    """
    keys: dict[str, dict[str, bytes]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) != 3:
            raise KeyFileError(f"line {number}: expected '<issuer> <key id> <hex secret>'")
        issuer, kid, secret = words
        if issuer not in ISSUERS:
            raise KeyFileError(
                f"line {number}: the first column is not an issuer (known: "
                f"{', '.join(ISSUERS)}); the columns are '<issuer> <key id> <hex secret>'"
            )
        if not KEY_ID_RE.fullmatch(kid) or _looks_like_secret(kid):
            raise KeyFileError(
                f"line {number}: the second column must be a key id, 1-64 of "
                "A-Z a-z 0-9 _ . - and not a hex secret; the columns are "
                "'<issuer> <key id> <hex secret>'"
            )
        try:
            key = bytes.fromhex(secret)
        except ValueError:
            raise KeyFileError(f"line {number}: the secret (third column) is not hex") from None
        if len(key) < MIN_KEY_BYTES:
            raise KeyFileError(
                f"line {number}: the secret is {len(key)} bytes; at least {MIN_KEY_BYTES} "
                "(openssl rand -hex 32)"
            )
        if kid in keys.setdefault(issuer, {}):
            raise KeyFileError(f"line {number}: key id {kid!r} is listed twice for {issuer}")
        keys[issuer][kid] = key
    return KeyRing(keys)


def file_problem(path: Path, st: os.stat_result) -> str | None:
    """Why a key file must not be trusted, or None.

    Whoever can write it can add a key and sign any permit; whoever can read
    it can do the same. So: a regular file, owned by this user or root, that
    neither the group nor others may write, and others may not read.
    """
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid not in (os.geteuid(), 0):
        return (
            f"{path} is owned by uid {st.st_uid}, neither this user ({os.geteuid()}) nor root "
            f"(chown root {path})"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "world" if st.st_mode & stat.S_IWOTH else "group"
        return f"{path} is {who}-writable (chmod 600 {path})"
    if st.st_mode & stat.S_IROTH:
        return f"{path} is world-readable (chmod 600 {path})"
    return None


def read_keys(path: Path) -> KeyRing:
    """Read and parse a key file; refuses one that is not safely owned and private.

    The file's status is taken from the open file, so what is checked is what is read.
    """
    try:
        with path.open("rb") as handle:
            st = os.fstat(handle.fileno())
            problem = file_problem(path, st)
            if problem:
                raise KeyFileError(problem)
            text = handle.read(MAX_KEY_FILE_BYTES + 1).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise KeyFileError(f"{path}: {reason}") from None
    if len(text) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes, not a key file")
    try:
        return parse_keys(text)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def keys_path(configured: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """``APPLY_PERMIT_KEYS_FILE``, else systemd's credential, else None."""
    if configured is not None:
        return configured
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        candidate = Path(directory) / CREDENTIAL_NAME
        if candidate.exists():
            return candidate
    return None
