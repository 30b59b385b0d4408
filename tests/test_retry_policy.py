"""``RetryPolicy``: the delay of each retry (``min(max_delay, base * factor**(k-1))`` scaled by
``1 ± jitter``) and the values it refuses."""

from __future__ import annotations

import pydantic
import pytest

from aioconductor import RetryPolicy


def test_the_delay_grows_by_factor_from_base_and_stops_at_max_delay() -> None:
    policy = RetryPolicy(retries=10, base=1.0, factor=2.0, max_delay=600.0, jitter=0.1)
    middle = [policy.delay(k, rand=0.5) for k in range(1, 12)]  # rand 0.5: no jitter
    assert middle == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600]


def test_the_jitter_scales_the_delay_within_one_plus_or_minus_jitter() -> None:
    policy = RetryPolicy(retries=5, base=10.0, factor=3.0, jitter=0.2)
    assert policy.delay(2, rand=0.0) == pytest.approx(30 * 0.8)
    assert policy.delay(2, rand=0.999999) == pytest.approx(30 * 1.2, rel=1e-5)
    drawn = [policy.delay(3) for _ in range(500)]
    assert all(90 * 0.8 <= d <= 90 * 1.2 for d in drawn)
    assert max(drawn) - min(drawn) > 90 * 0.2  # random, not one fixed value


def test_the_cap_applies_before_the_jitter() -> None:
    policy = RetryPolicy(retries=3, base=5.0, factor=10.0, max_delay=20.0, jitter=0.5)
    assert policy.delay(3, rand=0.0) == pytest.approx(10.0)
    assert policy.delay(3, rand=0.999999) == pytest.approx(30.0, rel=1e-5)


def test_a_late_retry_of_a_steep_policy_does_not_overflow() -> None:
    policy = RetryPolicy(retries=1000, base=1.0, factor=1000.0, max_delay=3600.0, jitter=0)
    assert policy.delay(1000) == 3600.0


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RetryPolicy(retries=3, base=0.0, jitter=0.5), [0.0, 0.0, 0.0]),
        (RetryPolicy(retries=3, base=2.0, factor=1.0, jitter=0), [2.0, 2.0, 2.0]),
        (RetryPolicy(retries=3, base=9.0, max_delay=4.0, jitter=0), [4.0, 4.0, 4.0]),
        (RetryPolicy(retries=3, base=3.0, max_delay=0.0, jitter=0), [0.0, 0.0, 0.0]),
    ],
    ids=["base-0", "factor-1", "max-below-base", "max-0"],
)
def test_edge_policies(policy: RetryPolicy, expected: list[float]) -> None:
    assert [policy.delay(k) for k in (1, 2, 3)] == expected


def test_the_defaults_are_the_documented_ones() -> None:
    policy = RetryPolicy(retries=5)
    assert (policy.base, policy.factor, policy.max_delay, policy.jitter) == (1.0, 2.0, 600.0, 0.1)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"retries": -1},
        {"retries": 1001},
        {"retries": 1, "base": -1.0},
        {"retries": 1, "base": float("nan")},
        {"retries": 1, "factor": 0.5},
        {"retries": 1, "max_delay": float("inf")},
        {"retries": 1, "jitter": 1.0},
        {"retries": 1, "jitter": -0.1},
        {"retries": 1, "backoff": 2.0},
    ],
)
def test_a_policy_that_makes_no_sense_is_refused(options: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        RetryPolicy(**options)  # type: ignore[arg-type]
