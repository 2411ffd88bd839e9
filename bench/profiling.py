"""py-spy on the daemon, and where its CPU went."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.context import Ctx
from bench.load import (
    Daemon,
)


def profiled(ctx: Ctx, daemon: Daemon) -> subprocess.Popen[bytes] | None:
    if ctx.profile is None:
        return None
    spy = Path(sys.executable).parent / "py-spy"
    ctx.profile.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(  # noqa: S603 - the venv's py-spy on our own child
        [
            str(spy),
            "record",
            "--pid",
            str(daemon.pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(ctx.profile),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


_PATH_HEAD = re.compile(r" \(/.*/(site-packages|src|lib/python3\.\d+)/")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:]*):\d+\)$")


def _frame(text: str) -> tuple[str, str]:
    """``(function, file)`` of one py-spy frame, paths shortened to the package."""
    m = _FRAME.match(_PATH_HEAD.sub(" (", text))
    return (m["func"], m["file"]) if m else (text, "?")


def _package(file: str) -> str:
    head = file.split("/", 1)[0].removesuffix(".py")
    return {"<frozen runpy>": "runpy"}.get(head, head)


def summarise_profile(path: Path, top: int = 15) -> list[str]:
    """Where the daemon's CPU went, from py-spy's raw (collapsed) stacks.

    Three views: self time by package (asyncio, redis, apply_layer, logging, ...);
    inclusive time by the innermost apply_layer function on the stack (which of
    our calls the cost belongs to); self time by function.
    """
    if not path.exists():
        return [f"(no profile written to {path}: is py-spy installed and allowed to attach?)"]
    by_package: Counter[str] = Counter()
    by_ours: Counter[str] = Counter()
    by_func: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += n
        func, file = frames[-1]
        by_package[_package(file)] += n
        by_func[f"{func} ({file})"] += n
        ours = [f"{fn} ({fl})" for fn, fl in frames if fl.startswith("apply_layer/")]
        by_ours[ours[-1] if ours else "(no apply_layer frame: event loop, callbacks)"] += n
    if not total:
        return ["(no samples)"]

    def block(title: str, counts: Counter[str]) -> list[str]:
        return [title] + [f"  {100 * n / total:5.1f}%  {k}" for k, n in counts.most_common(top)]

    return [
        f"{total} samples",
        *block("self time by package:", by_package),
        *block("inclusive time by the innermost apply_layer function:", by_ours),
        *block("self time by function:", by_func),
    ]
