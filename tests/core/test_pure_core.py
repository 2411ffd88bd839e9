"""The pure core stays pure: its modules import only the standard library and each other.

A pure module (issue 24) does no I/O at import or call: no Redis, no
structlog, no pydantic, no environment, no file. These checks read each
module's source (every import, at any depth) and then import them all in a
fresh interpreter, so a shell sneaking back in by a new import fails here
besides the layering contracts (import-linter, which sees imports but not
``os.environ`` or ``open``). By hand, the same check::

    grep -nE '^\\s*(from|import) ' src/apply_layer/core/<module>.py

One allowance: ``errors`` imports ``redis.exceptions``, for the two classes
whose Redis bases callers rely on (``ReplicaRefused``, ``FunctionLibraryMissing``).
It declares classes only; nothing of Redis runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

CORE = SRC / "apply_layer" / "core"
# Every module of core/ (the layer's folder is the list), and the executors'
# pure parts: the protocol and Binance's model.
PURE = (
    "apply_layer.core",
    *sorted(f"apply_layer.core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__"),
    "apply_layer.executors.base",
    "apply_layer.executors.binance",
    "apply_layer.executors.binance.model",
)
# Not pure (its factory imports the executors when called), but run on the way
# to executors.base and executors.binance.model: its module-level imports must be.
PARENT = "apply_layer.executors"
ALLOWED_THIRD_PARTY = {"apply_layer.core.errors": {"redis.exceptions"}}
# What a pure module must not touch, whatever it imports: the environment, files.
FORBIDDEN_NAMES = {"environ", "getenv", "open", "read_text", "read_bytes", "write_text"}
SHELLS = ("redis", "structlog", "pydantic", "pydantic_settings", "httpx", "prometheus_client")


def _path(module: str) -> Path:
    base = SRC.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _type_checking_only(tree: ast.Module) -> set[str]:
    """Imports under ``if TYPE_CHECKING:``: for mypy only, never run."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for child in node.body:
                found |= _imports(child)
    return found


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_only_the_standard_library_and_pure_modules(module: str) -> None:
    tree = ast.parse(_path(module).read_text(encoding="utf-8"))
    runtime = _imports(tree) - _type_checking_only(tree)
    allowed = ALLOWED_THIRD_PARTY.get(module, set())
    bad = sorted(
        name
        for name in runtime
        if name.split(".")[0] not in sys.stdlib_module_names
        and name != "__future__"
        and name not in PURE
        and name not in allowed
    )
    assert bad == [], f"{module} imports {bad}"


def test_the_executors_package_runs_only_pure_imports_on_the_way_to_its_pure_modules() -> None:
    tree = ast.parse(_path(PARENT).read_text(encoding="utf-8"))
    top = {
        n
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for n in _imports(node)
    }
    assert sorted(top - set(PURE) - {"__future__", "typing"}) == []


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_reads_no_file_and_no_environment(module: str) -> None:
    tree = ast.parse(_path(module).read_text(encoding="utf-8"))
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    used |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert sorted(used & FORBIDDEN_NAMES) == []


def test_importing_the_pure_core_loads_no_shell() -> None:
    """In a fresh interpreter: only ``redis.exceptions`` (through ``errors``) of any shell."""
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in PURE)
        + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({SHELLS!r})))\n"
        + "print(sorted(m for m in sys.modules if m.startswith('apply_layer')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "['redis']"  # redis.exceptions, and the package it sits in
    loaded = set(ast.literal_eval(out[1])) - {"apply_layer", PARENT}
    assert loaded <= set(PURE), sorted(loaded - set(PURE))
