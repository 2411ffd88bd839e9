"""``apply-layer sign-permit``: sign a permit by hand, as an issuer would (signing.py).

For operators who write a permit themselves (a manual close, a test on the
testnet) while ``APPLY_PERMIT_SIGNING`` requires the issuer's signature. It
reads the permit as JSON (argument or stdin), prints it signed on one line,
ready for ``SET <key> <value> EX 60``. The signature binds the plan id, the
symbol and the close the plan asks for (``--step``, and ``--pct`` when the
plan's step gives a share other than its name's), so it authorises exactly
that close of that plan. The key comes from a key file (the
same format as the daemon's), never from the command line or the
environment: ``--keys-file``, else ``APPLY_PERMIT_KEYS_FILE``, else systemd's
credential. Without ``--kid`` the issuer's last key in the file (the newest)
signs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from apply_layer.core import keys as K
from apply_layer.core.errors import CommandError, KeyFileError
from apply_layer.core.plans import PLAN_ID_RE, not_a_plan_id
from apply_layer.core.signing import sign_permit
from apply_layer.daemon.signing_keys import keys_path, read_keys
from apply_layer.settings import Settings


def _ttl(value: str) -> float:
    try:
        ttl = float(value)
    except ValueError:
        ttl = 0.0
    if not 1 <= ttl <= 86_400:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds in 1..86400")
    return ttl


def _plan_id(value: str) -> str:
    if not PLAN_ID_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(not_a_plan_id(value))
    return value


async def cmd_sign_permit(settings: Settings, args: argparse.Namespace) -> int:
    path = Path(args.keys_file) if args.keys_file else keys_path(settings.permit_keys_file)
    if path is None:
        raise CommandError(
            "no key file: pass --keys-file, set APPLY_PERMIT_KEYS_FILE, or run where "
            "$CREDENTIALS_DIRECTORY/permit-keys exists"
        )
    try:
        ring = read_keys(path)
    except KeyFileError as exc:
        raise CommandError(f"permit keys: {exc}") from None
    kids = ring.kids(args.issuer)
    kid = args.kid or (kids[-1] if kids else "")
    key = ring.key(args.issuer, kid)
    if key is None:
        have = ", ".join(kids) or "none"
        raise CommandError(f"{path} has no key {kid or '(any)'} for {args.issuer} (has: {have})")
    text = sys.stdin.read() if args.permit == "-" else args.permit
    try:
        permit: Any = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"the permit is not JSON: {exc}") from None
    if not isinstance(permit, dict):
        raise CommandError('the permit must be a JSON object, like {"allow": true, ...}')
    try:
        signed = sign_permit(
            permit,
            issuer=args.issuer,
            plan_id=args.plan_id,
            kid=kid,
            key=key,
            step=args.step,
            pct=args.pct,
            ttl_sec=args.ttl_sec,
            symbol=args.symbol,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(json.dumps(signed, separators=(",", ":")))
    if args.show_key:
        print(
            f"# SET {K.ISSUERS[args.issuer].key(args.plan_id)} '<the line above>' "
            f"EX {int(args.ttl_sec)}",
            file=sys.stderr,
        )
    return 0


def register(sub: Any) -> None:
    sign = sub.add_parser(
        "sign-permit",
        help="sign a permit with an issuer's key (for APPLY_PERMIT_SIGNING)",
        description="Print PERMIT (JSON) signed for one plan, as its issuer would sign it.",
    )
    sign.add_argument("--issuer", required=True, choices=sorted(K.ISSUERS), help="whose permit")
    sign.add_argument("--plan-id", required=True, type=_plan_id, help="the plan it authorises")
    sign.add_argument("--symbol", help="the plan's symbol (default: the permit's own)")
    sign.add_argument(
        "--step",
        required=True,
        help="the plan's close step, e.g. CLOSE_PARTIAL_25 (a plan with only an action: "
        "the step it stands for, CLOSE_FULL for FULL_CLOSE_PROPOSED)",
    )
    sign.add_argument(
        "--pct",
        help="the share the plan closes, if its step gives one other than its name's "
        "(default: the step's own, 25 for CLOSE_PARTIAL_25)",
    )
    sign.add_argument("--kid", help="key id (default: the issuer's last key in the file)")
    sign.add_argument("--keys-file", help="key file (default: APPLY_PERMIT_KEYS_FILE)")
    sign.add_argument(
        "--ttl-sec", type=_ttl, default=60.0, help="how long the signature is valid (default 60)"
    )
    sign.add_argument("--show-key", action="store_true", help="also print the Redis key to stderr")
    sign.add_argument("permit", nargs="?", default="-", help="the permit as JSON; - for stdin")
    sign.set_defaults(func=cmd_sign_permit)
