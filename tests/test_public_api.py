"""The public surface: ``__all__`` and the package's exports agree, and every error is there."""

from __future__ import annotations

import inspect

import aioconductor
from aioconductor import errors


def test_all_names_are_exported_and_documented() -> None:
    for name in aioconductor.__all__:
        obj = getattr(aioconductor, name)
        assert inspect.getdoc(obj), f"{name} has no docstring"


def test_every_public_class_and_function_is_in_all() -> None:
    exported = {
        name
        for name, obj in vars(aioconductor).items()
        if not name.startswith("_") and not inspect.ismodule(obj) and name != "annotations"
    }
    assert exported == set(aioconductor.__all__)


def test_every_error_class_is_public() -> None:
    for name in errors.__all__:
        assert name in aioconductor.__all__
        assert issubclass(getattr(aioconductor, name), aioconductor.AioconductorError)


def test_design_names_are_there() -> None:
    required = """Conductor FlowRegistry Job JobState Claim open_board open_store run_flow Task
    task linear unordered graph Failure FlowFailed Times ForEach ParameterizedForEach
    AlwaysRevert AlwaysRevertAll""".split()
    assert set(required) <= set(aioconductor.__all__)


def test_errors_default_message_is_the_docstring() -> None:
    assert str(errors.ClaimLost()) == errors.ClaimLost.__doc__
