"""`Task` and the `@task` decorator: the units of work a flow runs.

A task's signature is inspected once, when the task is built; the engine then binds arguments
from a precomputed table, so running a task costs no introspection.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypedDict, Unpack, overload

import anyio
import anyio.to_thread

from aioconductor._fastjson import plain
from aioconductor._payload import non_str_key
from aioconductor.errors import CompilationError
from aioconductor.errors import TaskTimeout
from aioconductor.failure import Failure

__all__ = ["Task", "TaskOptions", "task"]

#: ``provides`` as users may give it: one name, several names, or nothing.
Provides = str | Sequence[str] | None


def _names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


class Task:
    """A unit of work: ``execute`` does it, ``revert`` undoes it when the flow fails.

    Subclasses override ``async def execute(self, <params>)``; each parameter is bound by name
    from the flow's inputs or from what earlier tasks provide (a parameter with a default is
    optional). ``revert(self, <params>, *, result, flow_failures)`` is optional; it receives the
    same arguments, plus ``result`` (the value ``execute`` returned, the ``Failure`` it raised, or
    None if it was cancelled) and ``flow_failures`` (atom name -> ``Failure``) when it accepts
    them. A plain ``def`` (not ``async``) runs in a worker thread.

    A task holds no per-run state: one instance may sit in many flows running at once.

    Args:
        name: the task's name in its flow; defaults to the class name.
        provides: a name under which the whole return value is published, or a list of names
            (the return value is unpacked: a sequence by position, a mapping by key).
        requires: extra names the task requires; passed to ``execute`` only when it takes
            ``**kwargs``.
        rebind: parameter name -> the name to read it from (a dict), or the names to read the
            parameters from, in order (a list).
        inject: parameter name -> a fixed value, never read from the flow.
        timeout: seconds ``execute`` may take; past it the task fails with ``TaskTimeout``. A
            sync task cannot be interrupted: its timeout is checked when it returns.

    Raises:
        CompilationError: ``rebind`` or ``inject`` names a parameter ``execute`` does not take.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        provides: Provides = None,
        requires: str | Iterable[str] | None = None,
        rebind: Mapping[str, str] | Sequence[str] | None = None,
        inject: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        #: The task's name, unique within a flow.
        self.name: str = name or self._default_name()
        #: True when ``provides`` was one name: the whole result is published under it.
        self.provides_whole: bool = isinstance(provides, str)
        #: The names this task publishes.
        self.provides: tuple[str, ...] = _names(provides)
        self.inject: dict[str, Any] = dict(inject or {})
        self.timeout = timeout
        execute = self._execute_target()
        self._execute_fn: Callable[..., Any] = execute
        self._execute_async = inspect.iscoroutinefunction(execute)
        self._bind(inspect.signature(execute), _names(requires), rebind)
        self._setup_revert(self._revert_target())

    # -- construction ------------------------------------------------------------------------

    def _default_name(self) -> str:
        return type(self).__name__

    def _execute_target(self) -> Callable[..., Any]:
        if type(self).execute is Task.execute:
            raise TypeError(f"{type(self).__name__} must override execute()")
        return self.execute

    def _revert_target(self) -> Callable[..., Any] | None:
        return None if type(self).revert is Task.revert else self.revert

    def _bind(
        self,
        signature: inspect.Signature,
        extra: tuple[str, ...],
        rebind: Mapping[str, str] | Sequence[str] | None,
    ) -> None:
        params = [
            p
            for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        if any(p.kind is p.POSITIONAL_ONLY for p in signature.parameters.values()):
            raise CompilationError(f"task {self.name!r}: execute() takes positional-only params")
        var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        names = [p.name for p in params]
        if rebind is None:
            mapping: dict[str, str] = {}
        elif isinstance(rebind, Mapping):
            mapping = dict(rebind)
        else:
            if len(rebind) > len(names):
                raise CompilationError(
                    f"task {self.name!r}: rebind lists {len(rebind)} names but execute() takes "
                    f"{len(names)} parameters"
                )
            mapping = dict(zip(names, rebind, strict=False))
        for what, given in (("rebind", mapping), ("inject", self.inject)):
            unknown = sorted(set(given) - set(names))
            if unknown and not var_kw:
                raise CompilationError(
                    f"task {self.name!r}: {what} names {', '.join(map(repr, unknown))}, "
                    f"which execute() does not take"
                )
        #: (parameter, storage name, required) for every parameter read from the flow.
        self.params: tuple[tuple[str, str, bool], ...] = tuple(
            (p.name, mapping.get(p.name, p.name), p.default is p.empty)
            for p in params
            if p.name not in self.inject
        )
        bound = {key for _, key, _ in self.params}
        extras = [(k, k) for k in extra if k not in bound]
        extras += [(p, k) for p, k in mapping.items() if p not in names and p not in self.inject]
        if var_kw:
            self.params += tuple((p, k, True) for p, k in extras)
        #: Every name the task needs from its flow.
        self.requires: frozenset[str] = frozenset(
            {key for _, key, required in self.params if required} | {k for _, k in extras}
        )
        #: Names the task reads when they are available.
        self.optional: frozenset[str] = frozenset(
            key for _, key, required in self.params if not required
        )

    def _setup_revert(self, revert: Callable[..., Any] | None) -> None:
        self._revert_fn = revert
        self._revert_async = revert is not None and inspect.iscoroutinefunction(revert)
        self._revert_params: frozenset[str] | None = frozenset()
        self._revert_extras = frozenset[str]()
        if revert is None:
            return
        params = inspect.signature(revert).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            self._revert_params = None  # takes everything
            self._revert_extras = frozenset({"result", "flow_failures"})
        else:
            self._revert_params = frozenset(params)
            self._revert_extras = frozenset({"result", "flow_failures"} & set(params))

    # -- the user's hooks --------------------------------------------------------------------

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Do the work; the return value is published under ``provides``."""
        raise NotImplementedError

    async def revert(self, *args: Any, **kwargs: Any) -> Any:
        """Undo what ``execute`` did (the default does nothing)."""
        return None

    # -- used by the engine ------------------------------------------------------------------

    async def run_execute(self, kwargs: dict[str, Any]) -> Any:
        """Run ``execute`` with ``kwargs`` (plus ``inject``), honouring ``timeout``.

        Raises:
            TaskTimeout: ``execute`` ran past ``timeout``.
            TypeError: the result is not JSON-serialisable (a dict key that is not a str
                included: it would not read back as it was).
        """
        if self.inject:
            kwargs.update(self.inject)
        if self.timeout is None:
            if self._execute_async:  # called here: one coroutine frame less per running task
                result = await self._execute_fn(**kwargs)
            else:
                result = await self._call(self._execute_fn, False, kwargs)
        else:
            with anyio.move_on_after(self.timeout) as scope:
                result = await self._call(self._execute_fn, self._execute_async, kwargs)
            if scope.cancelled_caught:
                raise TaskTimeout(f"task {self.name!r} ran past its timeout of {self.timeout} s")
        if plain(result):
            return result
        try:
            json.dumps(result, allow_nan=False)
            problem = non_str_key(result)
        except (TypeError, ValueError, RecursionError) as exc:
            problem = str(exc)
        if problem is not None:
            # Failed here, as the task's own failure: the store would refuse the result later,
            # and the job would be abandoned on every attempt instead of reverted once.
            raise TypeError(
                f"task {self.name!r} returned a {type(result).__name__}, which is not "
                f"JSON-serialisable: {problem}"
            ) from None
        return result

    async def run_revert(
        self, kwargs: dict[str, Any], result: Any, flow_failures: Mapping[str, Failure]
    ) -> Any:
        """Run ``revert`` with the arguments it accepts, ``result`` and ``flow_failures``."""
        if self._revert_fn is None:
            return None
        if self.inject:
            kwargs.update(self.inject)
        if self._revert_params is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self._revert_params}
        if "result" in self._revert_extras:
            kwargs["result"] = result
        if "flow_failures" in self._revert_extras:
            kwargs["flow_failures"] = dict(flow_failures)
        return await self._call(self._revert_fn, self._revert_async, kwargs)

    @staticmethod
    async def _call(fn: Callable[..., Any], is_async: bool, kwargs: dict[str, Any]) -> Any:
        if is_async:
            return await fn(**kwargs)
        return await anyio.to_thread.run_sync(functools.partial(fn, **kwargs))

    def published(self, result: Any) -> dict[str, Any]:
        """The values ``result`` publishes, by name.

        Raises:
            ValueError: a result to unpack does not fit ``provides``.
        """
        if self.provides_whole:
            return {self.provides[0]: result}
        if not self.provides:
            return {}
        if isinstance(result, Mapping):
            missing = [n for n in self.provides if n not in result]
            if missing:
                raise ValueError(f"task {self.name!r} returned a mapping without {missing!r}")
            return {n: result[n] for n in self.provides}
        if isinstance(result, Sequence) and not isinstance(result, str | bytes):
            if len(result) != len(self.provides):
                raise ValueError(
                    f"task {self.name!r} returned {len(result)} values for "
                    f"{len(self.provides)} names {list(self.provides)!r}"
                )
            return dict(zip(self.provides, result, strict=True))
        raise ValueError(
            f"task {self.name!r} provides {list(self.provides)!r} but returned a "
            f"{type(result).__name__}, not a sequence or a mapping"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class TaskOptions(TypedDict, total=False):
    """The arguments of :class:`Task`, each optional, as ``@task`` passes them on."""

    name: str | None
    provides: Provides
    requires: str | Iterable[str] | None
    rebind: Mapping[str, str] | Sequence[str] | None
    inject: Mapping[str, Any] | None
    timeout: float | None


class FunctionTask(Task):
    """A task made by ``@task`` from a plain function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        revert: Callable[..., Any] | None = None,
        **options: Unpack[TaskOptions],
    ) -> None:
        self.fn = fn
        self.revert_fn = revert
        self.__doc__ = fn.__doc__
        super().__init__(**options)

    def _default_name(self) -> str:
        return str(getattr(self.fn, "__name__", type(self.fn).__name__))

    def _execute_target(self) -> Callable[..., Any]:
        return self.fn

    def _revert_target(self) -> Callable[..., Any] | None:
        return self.revert_fn

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped function."""
        return await self._call(self.fn, self._execute_async, kwargs)

    async def revert(self, *args: Any, **kwargs: Any) -> Any:
        """Call the ``revert`` function given to ``@task``, if any."""
        if self.revert_fn is None:
            return None
        return await self._call(self.revert_fn, self._revert_async, kwargs)


@overload
def task(fn: Callable[..., Any], /) -> Task: ...


@overload
def task(
    *, revert: Callable[..., Any] | None = None, **options: Unpack[TaskOptions]
) -> Callable[[Callable[..., Any]], Task]: ...


def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    revert: Callable[..., Any] | None = None,
    **options: Unpack[TaskOptions],
) -> Task | Callable[[Callable[..., Any]], Task]:
    """Turn a function into a :class:`Task`: ``@task`` or ``@task(provides=...)``.

    An ``async def`` runs on the event loop; a plain ``def`` runs in a worker thread.

    Args:
        fn: the function (given when used as ``@task``, without parentheses).
        revert: a function called (like ``Task.revert``) to undo the work.
        **options: the arguments of :class:`Task` (``name``, ``provides``, ``requires``,
            ``rebind``, ``inject``, ``timeout``), as keywords.

    Returns:
        The task, or a decorator that makes one.
    """

    def make(func: Callable[..., Any]) -> Task:
        return FunctionTask(func, revert=revert, **options)

    return make if fn is None else make(fn)
