"""`tune_gc`: the garbage collector's youngest generation, set and given back."""

from __future__ import annotations

import gc

import pytest

from aioconductor import tune_gc
from aioconductor.tuning import GC_YOUNG


def test_sets_the_youngest_threshold_and_returns_the_previous_ones() -> None:
    gc.set_threshold(700, 11, 12)
    assert tune_gc() == (700, 11, 12)
    assert gc.get_threshold() == (GC_YOUNG, 11, 12)
    assert tune_gc(5_000) == (GC_YOUNG, 11, 12)
    assert gc.get_threshold() == (5_000, 11, 12)
    assert gc.isenabled()


@pytest.mark.parametrize("young", [0, -1, 2.5, True, "700"])
def test_refuses_what_is_not_a_threshold_and_changes_nothing(young: object) -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="whole number >= 1"):
        tune_gc(young)  # type: ignore[arg-type]
    assert gc.get_threshold() == before
