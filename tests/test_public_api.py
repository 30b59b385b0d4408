"""The public surface: ``__all__`` and the package's exports agree, and every error is there."""

from __future__ import annotations

import inspect

import pytest

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


def test_what_a_retry_controller_is_written_with_is_public() -> None:
    for name in ("Retry", "Decision", "Attempt"):
        assert name in aioconductor.__all__


async def test_close_is_a_deprecated_alias_of_aclose() -> None:
    board = aioconductor.open_board("memory://")
    await board.connect()
    with pytest.warns(DeprecationWarning, match=r"close\(\) is deprecated: use aclose\(\)"):
        await board.close()
    assert board.closed


async def test_the_claim_verbs_have_two_shapes() -> None:
    # claim(id) gives the claim; claim_next and claim_batch give (job, claim) pairs.
    async with aioconductor.open_board("memory://") as board:
        first = await board.post("a", "f")
        await board.post("b", "f")
        await board.post("c", "f")
        claim = await board.claim(first.id, "o")
        assert isinstance(claim, aioconductor.Claim) and claim.job_id == first.id
        pair = await board.claim_next("o")
        assert pair is not None and pair[0].claim == pair[1]
        [(job, batch_claim)] = await board.claim_batch("o", 5)
        assert job.claim == batch_claim
        assert not hasattr(board, "claim_job")
