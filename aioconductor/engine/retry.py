"""Retry controllers: what a flow does when one of its tasks fails.

A controller sits on a pattern (``linear("f", a, b, retry=Times(3))``). When a task inside that
pattern fails, the engine asks the controller, which answers with a :class:`Decision`:

- ``RETRY``: revert the pattern's finished tasks (newest first), then run the pattern again;
- ``REVERT``: revert the pattern and let the failure reach the enclosing pattern's controller
  (with none, the whole flow is reverted);
- ``REVERT_ALL``: revert the whole flow.

Before each attempt the controller runs as an atom of its own: it may publish a value for the
attempt under ``provides`` (``ForEach`` does). Its history (one :class:`Attempt` per failed
attempt) is saved with the flow, so a resumed flow counts the attempts already spent.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from aioconductor.failure import Failure

__all__ = [
    "AlwaysRevert",
    "AlwaysRevertAll",
    "Attempt",
    "Decision",
    "ForEach",
    "ParameterizedForEach",
    "Retry",
    "Times",
]


class Decision(enum.StrEnum):
    """What a controller decides after a failure."""

    RETRY = "RETRY"
    REVERT = "REVERT"
    REVERT_ALL = "REVERT_ALL"


@dataclass(frozen=True)
class Attempt:
    """One failed attempt: the value the controller provided for it and what failed."""

    value: Any
    failures: Mapping[str, Failure] = field(default_factory=dict)


class Retry(abc.ABC):
    """The base of retry controllers.

    Args:
        name: the controller's atom name; defaults to ``"<flow name>.retry"``.
        provides: a name under which each attempt's value is published.
        requires: names the controller reads from the flow (see ``inputs`` below).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        provides: str | None = None,
        requires: str | Iterable[str] | None = None,
    ) -> None:
        self.name = name
        self.provides: tuple[str, ...] = (provides,) if provides else ()
        names = (requires,) if isinstance(requires, str) else tuple(requires or ())
        self.requires: frozenset[str] = frozenset(names)
        self.optional: frozenset[str] = frozenset()

    def execute(self, history: Sequence[Attempt], inputs: Mapping[str, Any]) -> Any:
        """The value for the next attempt (``history`` holds the failed ones); None by default."""
        return None

    @abc.abstractmethod
    def on_failure(self, history: Sequence[Attempt], inputs: Mapping[str, Any]) -> Decision:
        """Decide what to do; ``history`` already holds the attempt that just failed."""

    def delay(self, history: Sequence[Attempt]) -> float:
        """Seconds to wait before the next attempt (after the revert); 0 by default."""
        return 0.0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class Times(Retry):
    """Run the pattern up to ``attempts`` times in all, then give up.

    Args:
        attempts: attempts in total (``Times(3)``: the first run and two retries).
        backoff: seconds before the first retry; each later retry waits twice as long as the
            one before (``backoff * 2 ** k`` before retry ``k + 1``), at most ``max_backoff``.
        max_backoff: the longest wait between attempts.
        revert_all: when the attempts are spent, revert the whole flow (else ``REVERT``).
        name: the controller's atom name.
        provides: a name under which each attempt's number (1, 2, ...) is published.
    """

    def __init__(
        self,
        attempts: int,
        backoff: float = 0.0,
        *,
        max_backoff: float = 60.0,
        revert_all: bool = False,
        name: str | None = None,
        provides: str | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("Times needs at least one attempt")
        super().__init__(name, provides=provides)
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.revert_all = revert_all

    def execute(self, history: Sequence[Attempt], inputs: Mapping[str, Any]) -> Any:
        """The number of the attempt about to run, from 1."""
        return len(history) + 1

    def on_failure(self, history: Sequence[Attempt], inputs: Mapping[str, Any]) -> Decision:
        """``RETRY`` while attempts remain, then ``REVERT`` (or ``REVERT_ALL``)."""
        if len(history) < self.attempts:
            return Decision.RETRY
        return Decision.REVERT_ALL if self.revert_all else Decision.REVERT

    def delay(self, history: Sequence[Attempt]) -> float:
        """``backoff * 2 ** (failed attempts - 1)``, at most ``max_backoff``."""
        if not self.backoff:
            return 0.0
        return float(min(self.max_backoff, self.backoff * 2 ** max(0, len(history) - 1)))


class _Each(Retry):
    """Attempt once per value; each attempt publishes its value."""

    revert_all = False

    @abc.abstractmethod
    def values(self, inputs: Mapping[str, Any]) -> Sequence[Any]:
        """The values to try, in order."""

    def execute(self, history: Sequence[Attempt], inputs: Mapping[str, Any]) -> Any:
        """The next value to try."""
        values = self.values(inputs)
        if len(history) >= len(values):
            raise LookupError(f"{self!r}: no value left to try ({len(values)} values)")
        return values[len(history)]

    def on_failure(self, history: Sequence[Attempt], inputs: Mapping[str, Any]) -> Decision:
        """``RETRY`` while values remain, then ``REVERT`` (or ``REVERT_ALL``)."""
        if len(history) < len(self.values(inputs)):
            return Decision.RETRY
        return Decision.REVERT_ALL if self.revert_all else Decision.REVERT


class ForEach(_Each):
    """Try each of ``values`` in turn, publishing it under ``provides``, until one attempt works.

    Args:
        values: the values to try (JSON values: they are saved with the flow).
        provides: the name each value is published under.
        revert_all: when the values are spent, revert the whole flow (else ``REVERT``).
        name: the controller's atom name.
    """

    def __init__(
        self,
        values: Iterable[Any],
        *,
        provides: str,
        revert_all: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name, provides=provides)
        self._values = tuple(values)
        if not self._values:
            raise ValueError("ForEach needs at least one value")
        self.revert_all = revert_all

    def values(self, inputs: Mapping[str, Any]) -> Sequence[Any]:
        """The values given at construction."""
        return self._values


class ParameterizedForEach(_Each):
    """Like :class:`ForEach`, with the values read from the flow (an input or a provided name).

    Args:
        requires: the name of the sequence of values.
        provides: the name each value is published under.
        revert_all: when the values are spent, revert the whole flow (else ``REVERT``).
        name: the controller's atom name.
    """

    def __init__(
        self, *, requires: str, provides: str, revert_all: bool = False, name: str | None = None
    ) -> None:
        super().__init__(name, provides=provides, requires=requires)
        self.source = requires
        self.revert_all = revert_all

    def values(self, inputs: Mapping[str, Any]) -> Sequence[Any]:
        """The sequence named by ``requires``."""
        values = inputs[self.source]
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise TypeError(f"{self!r}: {self.source!r} is not a sequence of values")
        return values


class AlwaysRevert(Retry):
    """Never retry: revert this pattern and pass the failure to the enclosing one."""

    def on_failure(self, history: Sequence[Attempt], inputs: Mapping[str, Any]) -> Decision:
        """Always ``REVERT``."""
        return Decision.REVERT


class AlwaysRevertAll(Retry):
    """Never retry: revert the whole flow."""

    def on_failure(self, history: Sequence[Attempt], inputs: Mapping[str, Any]) -> Decision:
        """Always ``REVERT_ALL``."""
        return Decision.REVERT_ALL
