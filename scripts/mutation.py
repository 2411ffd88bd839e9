"""Mutation testing of the pure core: how many deliberate bugs do the tests catch?

    .venv/bin/python scripts/mutation.py                 # everything (~20 min)
    .venv/bin/python scripts/mutation.py core.sizing core.plans   # some modules only
    .venv/bin/python scripts/mutation.py --hand-only     # only the hand-made mutants
    .venv/bin/python scripts/mutation.py --report-only   # re-read mutmut's last results

Two sources of mutants:
- mutmut 3 (configured in pyproject.toml, ``[tool.mutmut]``) mutates the code
  inside the functions of the pure modules and runs the tests that reach each
  mutant;
- ``HAND_MUTANTS`` below: the Lua scripts and module constants, which mutmut 3
  does not mutate. Each one is applied to the working tree, the tests named
  with it are run, and the file is restored (also on Ctrl-C).

Prints the share killed per module and each survivor, and exits 1 when a
module is under ``--floor`` (90 %). Survivors judged equivalent (no test can
tell them from the original) are listed with the reason in docs/TESTING.md.
Not part of CI: it takes about 20 minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "apply_layer"
MUTANTS = ROOT / "mutants" / "src" / "apply_layer"
MODULES = (
    "core.sizing",
    "core.permits",
    "core.plans",
    "executors.binance.model",
    "core.outcomes",
    "core.lifecycle",
    "core.marker_stats",
    "core.decision",
    "core.order_ids",
    "core.log_format",
)
KILLED = {1, 3, 36, 37, 24, -24, 152, 255}  # failed, pytest error, timeout, type check
SURVIVED = {0}
NO_TESTS = {5, 33}


@dataclass(frozen=True)
class HandMutant:
    """A textual change to one file, and the tests that must notice it."""

    group: str
    path: str  # relative to src/apply_layer
    old: str
    new: str
    tests: tuple[str, ...]


GATE_TESTS = ("tests/store/test_gate.py", "tests/core/test_permits.py")
KILL_TESTS = (
    "tests/store/test_kill_switch.py",
    "tests/store/test_gate.py",
    "tests/core/test_permits.py",
    "tests/store/test_lease.py",
)
PLAN_TESTS = ("tests/core/test_plans.py",)
LEASE_TESTS = ("tests/store/test_lease.py",)
STALL_TESTS = ("tests/store/test_gate_hostile_permits.py",)
MODEL_TESTS = ("tests/executors/binance/test_model.py", "tests/executors/binance/test_client.py")

HAND_MUTANTS: tuple[HandMutant, ...] = (
    # gate.lua: the verdict rules
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "if v == true or v == 1 then",
        "if v == true or v ~= 0 then",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "return l == 'true' or l == '1'",
        "return l == 'true' or l ~= '0'",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "obj = {allow = (obj == 1)}",
        "obj = {allow = (obj ~= 0)}",
        GATE_TESTS,
    ),
    HandMutant(
        "lua", "store/lua/gate.lua", "q == q and q > 0 and", "q == q and q >= 0 and", GATE_TESTS
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "q > 0 and q < math.huge",
        "q > 0 and q <= math.huge",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "return 'deny', 'not_granted' end",
        "return 'allow', '' end",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "s ~= cjson.null and s ~= symbol then",
        "s ~= cjson.null and false then",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "if q == nil or q == cjson.null then q = obj['safe_close_qty'] end",
        "",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "if not ok then return kind, raw, 'deny', 'malformed' end",
        "if not ok then return kind, raw, 'missing', '' end",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "return kind, '', 'deny', 'wrong_type'",
        "return kind, '', 'missing', ''",
        GATE_TESTS,
    ),
    HandMutant("lua", "store/lua/gate.lua", "(g ~= nil and not is_true(g)) or ", "", GATE_TESTS),
    # gate.lua: the decision and what it consumes
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "if any_deny then status = 'DENY'",
        "if false then status = 'DENY'",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "elseif final then status = 'TIMEOUT'",
        "elseif true then status = 'TIMEOUT'",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "elseif not any_missing then status = 'ALLOW'",
        "elseif true then status = 'ALLOW'",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "or status == 'DENY' or status == 'GOV_BLOCK'",
        "or status == 'DENY'",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "local consume = status == 'ALLOW' or",
        "local consume = status == 'KILL' or status == 'ALLOW' or",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "if consume and p.verdict ~= 'missing' then",
        "if consume then",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "if not status and redis.call('TYPE', KEYS[2])['ok'] == 'string' then",
        "if false then",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "if kill_env or kill_on(KEYS[3]) or kill_on(KEYS[4]) then",
        "if kill_env or kill_on(KEYS[3]) then",
        GATE_TESTS,
    ),
    HandMutant("lua", "store/lua/gate.lua", "if recorded then", "if false then", GATE_TESTS),
    HandMutant("lua", "store/lua/gate.lua", "head[1] == token and 1 or 0", "1", GATE_TESTS),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "'state', status == 'ALLOW' and 'permitted' or 'blocked',",
        "'state', 'permitted',",
        GATE_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "redis.call('EXPIRE', journal, ttl)\nreturn reply",
        "return reply",
        GATE_TESTS,
    ),
    # gate.lua and kill_switch.lua: no permit stalls Redis (issue 21)
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "if count > MAX_PERMIT_FIELDS or memory > MAX_PERMIT_MEMORY then",
        "if false then",
        STALL_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/gate.lua",
        "redis.call('UNLINK', p.key)",
        "redis.call('DEL', p.key)",
        STALL_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/kill_switch.lua",
        "if redis.call('STRLEN', key) > 4 then return false end",
        "",
        STALL_TESTS,
    ),
    # kill_switch.lua (gate and lease)
    HandMutant(
        "lua",
        "store/lua/kill_switch.lua",
        "return l == '1' or l == 'true' or l == 'on'",
        "return l == '1' or l == 'true'",
        KILL_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/kill_switch.lua",
        "return l == '1' or l == 'true' or l == 'on'",
        "return l ~= '0'",
        KILL_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/kill_switch.lua",
        "~= 'string' then return false end",
        "~= 'string' then return true end",
        KILL_TESTS,
    ),
    HandMutant(
        "lua",
        "store/lua/kill_switch.lua",
        "local l = string.lower(redis.call('GET', key))",
        "local l = redis.call('GET', key)",
        KILL_TESTS,
    ),
    # lease.lua and the scripts composed with it (lease_*.lua, record_attempt.lua, publish.lua)
    HandMutant(
        "lease",
        "store/lua/lease.lua",
        "return redis.call('GET', key) == token",
        "return true",
        LEASE_TESTS,
    ),
    HandMutant(
        "lease",
        "store/lua/lease.lua",
        "if redis.call('GET', key) == token then return redis.call('DEL', key) end",
        "if true then return redis.call('DEL', key) end",
        LEASE_TESTS,
    ),
    HandMutant(
        "lease", "store/lua/lease_acquire.lua", "ARGV[1], 'NX', 'PX'", "ARGV[1], 'PX'", LEASE_TESTS
    ),
    HandMutant(
        "lease",
        "store/lua/lease_acquire.lua",
        "if lease_held(KEYS[1], ARGV[1]) then return 'OK' end",
        "",
        LEASE_TESTS,
    ),
    HandMutant("lease", "store/lua/lease_acquire.lua", "ARGV[4] == '1' and ", "", LEASE_TESTS),
    HandMutant(
        "lease",
        "store/lua/lease_acquire.lua",
        "if redis.call('HEXISTS', KEYS[2], 'result_id') == 1 then",
        "if redis.call('HEXISTS', KEYS[2], 'result_id') == 2 then",
        LEASE_TESTS,
    ),
    HandMutant(
        "lease",
        "store/lua/lease_acquire.lua",
        "if t ~= 'none' and t ~= 'string' then return 'WRONGTYPE' end",
        "",
        ("tests/daemon/test_poison.py",),
    ),
    HandMutant(
        "lease",
        "store/lua/lease_renew.lua",
        "then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end",
        "then return 1 end",
        LEASE_TESTS,
    ),
    HandMutant(
        "lease",
        "store/lua/lease_renew.lua",
        "if lease_held(KEYS[1], ARGV[1]) then",
        "if true then",
        LEASE_TESTS,
    ),
    HandMutant(
        "lease",
        "store/lua/lease_release.lua",
        "return lease_release(KEYS[1], ARGV[1])",
        "return 0",
        LEASE_TESTS,
    ),
    HandMutant(
        "lease",
        "store/lua/publish.lua",
        "if ARGV[10] ~= '' then lease_release(KEYS[5], ARGV[10]) end",
        "",
        LEASE_TESTS,
    ),
    HandMutant(
        "lease",
        "store/lua/record_attempt.lua",
        "if not lease_held(KEYS[2], ARGV[5]) then",
        "if false then",
        LEASE_TESTS,
    ),
    # plans.py constants
    HandMutant(
        "constants",
        "core/plans.py",
        '"CLOSE_PARTIAL_25": Decimal(25),',
        '"CLOSE_PARTIAL_25": Decimal(24),',
        PLAN_TESTS,
    ),
    HandMutant(
        "constants",
        "core/plans.py",
        '"CLOSE_PARTIAL_50": Decimal(50),',
        '"CLOSE_PARTIAL_50": Decimal(51),',
        PLAN_TESTS,
    ),
    HandMutant("constants", "core/plans.py", '"CLOSE_PARTIAL_50": Decimal(50),', "", PLAN_TESTS),
    HandMutant(
        "constants",
        "core/plans.py",
        '"PARTIAL_75": Decimal(75),',
        '"PARTIAL_75": Decimal(74),',
        PLAN_TESTS,
    ),
    HandMutant("constants", "core/plans.py", '"PARTIAL_25": Decimal(25),', "", PLAN_TESTS),
    HandMutant("constants", "core/plans.py", '"FULL_CLOSE": "CLOSE_FULL",', "", PLAN_TESTS),
    HandMutant(
        "constants",
        "core/plans.py",
        '"PARTIAL_50": "CLOSE_PARTIAL_50",',
        '"PARTIAL_50": "CLOSE_PARTIAL_25",',
        PLAN_TESTS,
    ),
    HandMutant("constants", "core/plans.py", "MAX_STEPS = 16", "MAX_STEPS = 17", PLAN_TESTS),
    HandMutant(
        "constants", "core/plans.py", "MAX_FIELD_BYTES = 8192", "MAX_FIELD_BYTES = 8193", PLAN_TESTS
    ),
    HandMutant(
        "constants",
        "core/plans.py",
        "MAX_ENTRY_BYTES = 65536",
        "MAX_ENTRY_BYTES = 655360",
        PLAN_TESTS,
    ),
    HandMutant(
        "constants", "core/plans.py", "MS_THRESHOLD = 1e11", "MS_THRESHOLD = 1e12", PLAN_TESTS
    ),
    HandMutant(
        "constants",
        "core/plans.py",
        'PLAN_ID_RE = re.compile(f"[{PLAN_ID_CHARS}]{{1,64}}")',
        'PLAN_ID_RE = re.compile(f"[{PLAN_ID_CHARS}]{{1,65}}")',
        PLAN_TESTS,
    ),
    HandMutant(
        "constants",
        "core/plans.py",
        'SYMBOL_RE = re.compile(r"[A-Z0-9]{2,30}")',
        'SYMBOL_RE = re.compile(r"[A-Z0-9]{1,30}")',
        PLAN_TESTS,
    ),
    HandMutant(
        "constants",
        "core/plans.py",
        'DECISIONS = ("EXECUTE", "SKIP", "BLOCKED", "ERROR")',
        'DECISIONS = ("EXECUTE", "SKIP", "BLOCKED")',
        PLAN_TESTS,
    ),
    # executors/binance/model.py constants
    HandMutant(
        "constants",
        "executors/binance/model.py",
        "frozenset({-1006, -1007})",
        "frozenset({-1006})",
        MODEL_TESTS,
    ),
    HandMutant(
        "constants",
        "executors/binance/model.py",
        "frozenset({-1006, -1007})",
        "frozenset({-1007})",
        MODEL_TESTS,
    ),
    HandMutant(
        "constants",
        "executors/binance/model.py",
        "frozenset({-1001, -1008})",
        "frozenset({-1001})",
        MODEL_TESTS,
    ),
    HandMutant(
        "constants",
        "executors/binance/model.py",
        "frozenset({-1001, -1008})",
        "frozenset({-1008})",
        MODEL_TESTS,
    ),
    HandMutant(
        "constants",
        "executors/binance/model.py",
        '"FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"',
        '"FILLED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"',
        MODEL_TESTS,
    ),
    HandMutant(
        "constants",
        "executors/binance/model.py",
        '"FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"',
        '"FILLED", "CANCELED", "EXPIRED_IN_MATCH", "REJECTED"',
        MODEL_TESTS,
    ),
    HandMutant(
        "constants",
        "executors/binance/model.py",
        '"FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"',
        '"FILLED", "CANCELED", "EXPIRED", "REJECTED"',
        MODEL_TESTS,
    ),
    HandMutant(
        "constants",
        "executors/binance/model.py",
        '"FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"',
        '"FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH"',
        MODEL_TESTS,
    ),
    HandMutant(
        "constants",
        "executors/binance/model.py",
        "INVALID_TIMESTAMP = -1021",
        "INVALID_TIMESTAMP = -1022",
        MODEL_TESTS,
    ),
    HandMutant(
        "constants",
        "executors/binance/model.py",
        "NO_SUCH_ORDER = -2013",
        "NO_SUCH_ORDER = -2011",
        MODEL_TESTS,
    ),
    # statuses.py constants (the result's decision and journal states)
    HandMutant(
        "constants",
        "core/statuses.py",
        "OutcomeStatus.BLOCKED: ResultDecision.BLOCKED,",
        "OutcomeStatus.BLOCKED: ResultDecision.ERROR,",
        ("tests/core/test_outcomes.py",),
    ),
    HandMutant(
        "constants",
        "core/statuses.py",
        "OutcomeStatus.SKIPPED: ResultDecision.SKIP,",
        "OutcomeStatus.SKIPPED: ResultDecision.BLOCKED,",
        ("tests/core/test_outcomes.py",),
    ),
    HandMutant(
        "constants",
        "core/statuses.py",
        "OutcomeStatus.FAILED: ResultDecision.ERROR,",
        "OutcomeStatus.FAILED: ResultDecision.SKIP,",
        ("tests/core/test_outcomes.py",),
    ),
    HandMutant(
        "constants",
        "core/statuses.py",
        "OutcomeStatus.EXECUTED: ResultDecision.EXECUTE,",
        "OutcomeStatus.EXECUTED: ResultDecision.BLOCKED,",
        ("tests/core/test_outcomes.py",),
    ),
    HandMutant(
        "constants",
        "core/statuses.py",
        "OutcomeStatus.REJECTED: JournalState.REJECTED,",
        "OutcomeStatus.REJECTED: JournalState.FAILED,",
        ("tests/core/test_outcomes.py",),
    ),
    # the client order id and the claim namespace
    HandMutant(
        "constants",
        "core/order_ids.py",
        'return "F" if pct == 100 else f"{pct:f}"',
        'return "F" if pct == 100 else f"{100 - pct:f}"',
        (
            "tests/executors/binance/test_order_ids.py",
            "tests/executors/binance/test_executor.py",
        ),
    ),
    HandMutant(
        "constants",
        "core/order_ids.py",
        "CLIENT_ORDER_ID_MAX = 36",
        "CLIENT_ORDER_ID_MAX = 37",
        (
            "tests/core/test_order_ids.py",
            "tests/executors/binance/test_order_ids.py",
            "tests/executors/binance/test_executor.py",
        ),
    ),
    HandMutant(
        "constants",
        "core/keys.py",
        "COOLDOWN_TTL_SEC = 3600",
        "COOLDOWN_TTL_SEC = 3000",
        ("tests/daemon/test_daemon_e2e.py::test_paper_happy_path",),
    ),
    HandMutant(
        "constants",
        "core/keys.py",
        'CLAIM_TEMPLATE = "quantum:apply:claim:{plan_id}"',
        'CLAIM_TEMPLATE = "quantum:apply:dedupe:{plan_id}"',
        (
            "tests/daemon/test_conformance.py::test_the_planners_dedupe_key_is_left_alone_and_its_plans_execute",
        ),
    ),
    # marker_stats.py constants
    HandMutant(
        "constants",
        "core/marker_stats.py",
        "BUCKET_EDGES = (1, 5, 20, 50, 100, 250, 500, 1000, 1500)",
        "BUCKET_EDGES = (1, 5, 20, 50, 100, 250, 500, 1000, 1200)",
        ("tests/core/test_marker_stats.py",),
    ),
    HandMutant(
        "constants",
        "core/marker_stats.py",
        'CATEGORY_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")',
        'CATEGORY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")',
        ("tests/core/test_marker_stats.py",),
    ),
    HandMutant(
        "constants",
        "core/marker_stats.py",
        "PERCENTILES = (50, 95, 99)",
        "PERCENTILES = (50, 90, 99)",
        ("tests/core/test_marker_stats.py",),
    ),
)


def run_mutmut(modules: list[str]) -> None:
    for module in modules:
        print(f"== mutmut: apply_layer.{module}", flush=True)
        subprocess.run(  # noqa: S603 - our own venv's mutmut
            [str(ROOT / ".venv" / "bin" / "mutmut"), "run", f"apply_layer.{module}.*"],
            cwd=ROOT,
            check=False,
            stdout=subprocess.DEVNULL,
        )


def mutmut_scores(modules: list[str]) -> dict[str, tuple[Counter[str], list[str]]]:
    """Per module: counts by verdict, and the survivors' names (from mutmut's .meta files)."""
    out: dict[str, tuple[Counter[str], list[str]]] = {}
    for module in modules:
        meta = MUTANTS / f"{module.replace('.', '/')}.py.meta"
        if not meta.exists():
            continue
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        counts: Counter[str] = Counter()
        survivors = []
        for name, code in sorted(codes.items()):
            if code in KILLED:
                counts["killed"] += 1
            elif code in SURVIVED:
                counts["survived"] += 1
                survivors.append(name)
            elif code in NO_TESTS:
                counts["no tests"] += 1
                survivors.append(name)
            elif code is None:
                counts["not checked"] += 1
            else:
                counts["other"] += 1
        out[module] = (counts, survivors)
    return out


def run_hand(mutants: tuple[HandMutant, ...]) -> dict[str, tuple[Counter[str], list[str]]]:
    out: dict[str, tuple[Counter[str], list[str]]] = {}
    for i, m in enumerate(mutants, 1):
        path = PACKAGE / m.path
        original = path.read_text(encoding="utf-8")
        counts, survivors = out.setdefault(m.group, (Counter(), []))
        label = f"#{i} {m.path}: {m.old[:50]!r} -> {m.new[:50]!r}"
        if original.count(m.old) != 1:
            counts["stale"] += 1
            survivors.append(f"{label} (pattern not found once: update HAND_MUTANTS)")
            continue
        try:
            path.write_text(original.replace(m.old, m.new), encoding="utf-8")
            cmd = [str(ROOT / ".venv" / "bin" / "pytest"), "-x", "-q", "-p", "no:cacheprovider"]
            proc = subprocess.run(  # noqa: S603 - our own venv's pytest
                [*cmd, *m.tests], cwd=ROOT, check=False, capture_output=True
            )
        finally:
            path.write_text(original, encoding="utf-8")
        if proc.returncode in (1, 3):
            counts["killed"] += 1
        else:
            counts["survived"] += 1
            survivors.append(label)
        print(f"  {'killed  ' if proc.returncode in (1, 3) else 'SURVIVED'} {label}", flush=True)
    return out


def report(title: str, scores: dict[str, tuple[Counter[str], list[str]]], floor: float) -> bool:
    ok = True
    print(f"\n{title}")
    print(f"  {'module':<16}{'mutants':>8}{'killed':>8}{'survived':>9}{'score':>8}")
    for module, (counts, _) in scores.items():
        judged = counts["killed"] + counts["survived"] + counts["no tests"] + counts["stale"]
        score = 100.0 * counts["killed"] / judged if judged else 100.0
        ok &= score >= floor
        flag = "" if score >= floor else f"  < {floor:.0f} %"
        print(
            f"  {module:<16}{judged:>8}{counts['killed']:>8}"
            f"{judged - counts['killed']:>9}{score:>7.1f}%{flag}"
        )
    for module, (_, survivors) in scores.items():
        if survivors:
            print(f"\n  survivors in {module}:")
            for name in survivors:
                print(f"    {name}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--hand-only", action="store_true", help="only the hand-made mutants")
    parser.add_argument("--no-hand", action="store_true", help="skip the hand-made mutants")
    parser.add_argument("--report-only", action="store_true", help="read mutmut's last results")
    parser.add_argument("--floor", type=float, default=90.0, help="lowest passing score, %%")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(
            f"not a mutated module: {', '.join(unknown)} (choose from {', '.join(MODULES)})"
        )
    modules = list(args.modules) or list(MODULES)
    ok = True
    if not args.hand_only:
        if not args.report_only:
            run_mutmut(modules)
        ok &= report("mutmut (code inside functions)", mutmut_scores(modules), args.floor)
    if not args.no_hand and not args.report_only:
        ok &= report("hand-made (Lua and constants)", run_hand(HAND_MUTANTS), args.floor)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
