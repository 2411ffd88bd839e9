"""One exception tree: every class in ``errors.py``, under one root, drawn in its docstring."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from apply_layer.core import errors

SRC = Path(errors.__file__).parent.parent  # the whole package, every layer
CLASSES = [
    c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
]


def test_no_exception_class_is_defined_outside_errors_py() -> None:
    outside = []
    for path in SRC.rglob("*.py"):
        if path == Path(errors.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(base).endswith(("Error", "Exception"))
                or ast.unparse(base) in {c.__name__ for c in CLASSES}
                for base in node.bases
            ):
                outside.append(f"{path.relative_to(SRC)}:{node.name}")
    assert outside == []


def test_every_class_is_under_the_root_and_drawn_in_the_tree() -> None:
    assert len(CLASSES) >= 30
    for cls in CLASSES:
        assert issubclass(cls, errors.ApplyLayerError), cls
        assert cls.__name__ in (errors.__doc__ or ""), cls


def test_the_bases_callers_rely_on_are_kept() -> None:
    assert issubclass(errors.InvalidPlan, ValueError)
    assert issubclass(errors.KeyFileError, ValueError)
    assert issubclass(errors.RedisUnavailable, RuntimeError)
    assert issubclass(errors.ReplicaRefused, RedisConnectionError)
    assert issubclass(errors.FunctionLibraryMissing, RedisError)
    assert not issubclass(errors.FunctionLibraryMissing, RedisConnectionError)
    assert issubclass(errors.BinanceConfigError, errors.ConfigError)
    assert issubclass(errors.HedgeMode, errors.BinanceError)
    assert issubclass(errors.OrderNotFound, errors.ExchangeRejected)
    assert issubclass(errors.LeaseBusy, errors.RetryLater)


def test_the_control_flow_exceptions_share_one_base_and_the_exchange_errors_do_not() -> None:
    control = [
        errors.RetryLater,
        errors.LeaseBusy,
        errors.AttemptsChanged,
        errors.PositionMoved,
        errors.AlreadyFinal,
        errors.KillSwitchOn,
        errors.LeaseKeyWrongType,
        errors.OrderMayBeOut,
        errors.SendRefused,
        errors.NotReplicated,
    ]
    assert all(issubclass(c, errors.StepInterrupted) for c in control)
    outside = set(CLASSES) - set(control) - {errors.StepInterrupted, errors.SendRecordRefused}
    assert not any(issubclass(c, errors.StepInterrupted) for c in outside)
    # A send record refused is a RetryLater, but not every RetryLater (LeaseBusy) is one.
    assert issubclass(errors.AttemptsChanged, errors.SendRecordRefused)
    assert issubclass(errors.PositionMoved, errors.SendRecordRefused)
    assert not issubclass(errors.LeaseBusy, errors.SendRecordRefused)
