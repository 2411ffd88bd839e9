"""The layout issue 24 set: folders that are the layers, rules that keep them, tests by name.

- The import-linter contracts in pyproject.toml hold on the tree, and they
  bite: a copy of the package with one forbidden import fails the right one.
- At most 12 modules stand at the top of the package; each layer folder says
  in its docstring what it holds.
- A module's tests are found by its name: a test file named after it
  (``test_<module>*.py``), or a test file whose docstring names the module's
  path (``daemon/housekeeping.py``) because it is tested through a suite.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "apply_layer"
TESTS = ROOT / "tests"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LAYERS = ("core", "store", "executors", "daemon", "ops", "commands")


def _lint_imports(src: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}  # the copy, ahead of the installed package
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=src.parent,
        check=False,
    )


def test_the_contracts_hold_on_the_tree() -> None:
    run = _lint_imports(ROOT / "src", ROOT / "pyproject.toml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 kept, 0 broken" in run.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("core/plans.py", "import redis", "The pure core does no I/O"),
        ("core/sizing.py", "from apply_layer import settings", "The pure core does no I/O"),
        ("executors/paper.py", "from apply_layer.store import journal", "Executors do not touch"),
        ("store/journal.py", "from apply_layer.daemon import processing", "Layers"),
        ("daemon/service.py", "from apply_layer.commands import check", "Layers"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "apply_layer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = src / "apply_layer" / module
    text = target.read_text(encoding="utf-8")
    head, sep, rest = text.partition("from __future__ import annotations\n")
    target.write_text(head + sep + line + "  # noqa\n" + rest, encoding="utf-8")
    run = _lint_imports(src, tmp_path / "pyproject.toml")
    assert run.returncode == 1, run.stdout
    assert "0 broken" not in run.stdout
    broken_part = run.stdout.split("Broken contracts", 1)[1]
    assert broken in broken_part
    assert module.removesuffix(".py").replace("/", ".") in broken_part


def test_few_modules_at_the_top_and_every_layer_says_what_it_holds() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert set(LAYERS) <= set(folders), folders
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()) >= 3, f"{layer}/__init__.py says what it holds"


def _test_files() -> dict[Path, str]:
    out = {}
    for path in TESTS.rglob("test_*.py"):
        out[path] = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return out


def test_every_module_has_tests_found_by_its_name() -> None:
    tests = _test_files()
    missing = []
    for module in sorted(PACKAGE.rglob("*.py")):
        if module.name in {"__init__.py", "__main__.py"}:
            continue
        rel = module.relative_to(PACKAGE).as_posix()
        named = any(
            t.name == f"test_{module.stem}.py" or t.name.startswith(f"test_{module.stem}_")
            for t in tests
        )
        if not (named or any(rel in doc for doc in tests.values())):
            missing.append(rel)
    assert missing == [], f"no test file named after these, and none names them: {missing}"
