"""`Failure`: a captured exception that can be saved, sent and shown, without pickling."""

from __future__ import annotations

import traceback as _traceback
from typing import Any

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import PrivateAttr

__all__ = ["Failure"]


class Failure(BaseModel):
    """What went wrong in a task: the exception's type, message and traceback, as text.

    A failure is plain data: it round-trips through JSON (``model_dump_json`` /
    ``model_validate_json``) and is never unpickled. The original exception is kept in memory
    (``exception``) while the failure lives in the process that caught it.
    """

    model_config = ConfigDict(frozen=True)

    #: The exception's qualified type name, for example ``builtins.ValueError``.
    exc_type: str
    message: str
    traceback: str = ""
    #: Qualified names of the exception's classes, most derived first (for ``check``).
    exc_types: tuple[str, ...] = ()
    _exception: BaseException | None = PrivateAttr(default=None)

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        """Capture ``exc`` (with its traceback) as a failure."""
        types = tuple(_qualname(t) for t in type(exc).__mro__ if issubclass(t, BaseException))
        text = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
        failure = cls(exc_type=types[0], message=str(exc), traceback=text, exc_types=types)
        failure._exception = exc
        return failure

    @property
    def exception(self) -> BaseException | None:
        """The original exception, when this failure was captured in this process."""
        return self._exception

    def check(self, *exc_types: type[BaseException] | str) -> bool:
        """Whether the failure's exception is an instance of one of ``exc_types``.

        Types may be given as classes or as qualified names (``"builtins.KeyError"``).
        """
        names = {t if isinstance(t, str) else _qualname(t) for t in exc_types}
        return any(name in names for name in self.exc_types or (self.exc_type,))

    def __str__(self) -> str:
        return f"{self.exc_type}: {self.message}"

    def __repr__(self) -> str:
        return f"Failure({self.exc_type!r}, {self.message!r})"

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Failure):
            return NotImplemented
        return (self.exc_type, self.message, self.traceback) == (
            other.exc_type,
            other.message,
            other.traceback,
        )

    def __hash__(self) -> int:
        return hash((self.exc_type, self.message, self.traceback))


def _qualname(exc_type: type[BaseException]) -> str:
    return f"{exc_type.__module__}.{exc_type.__qualname__}"
