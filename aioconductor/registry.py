"""`FlowRegistry`: the names a job's ``flow`` field may take, each with its factory."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, Unpack, overload

import pydantic

from aioconductor._loading import load_attribute
from aioconductor.engine.patterns import Flow
from aioconductor.engine.patterns import linear
from aioconductor.engine.task import Task
from aioconductor.errors import ConfigurationError
from aioconductor.errors import FlowNotFound
from aioconductor.errors import PayloadError
from aioconductor.models import Job
from aioconductor.models import RetryPolicy

if TYPE_CHECKING:
    from aioconductor.boards.base import JobBoard
    from aioconductor.boards.base import PostOptions

__all__ = ["FlowFactory", "FlowRegistry", "args_errors"]

#: A flow registered as it is (a ``Flow``, or a ``Task``): ``register`` returns it.
_StaticFlow = TypeVar("_StaticFlow", Flow, Task)


class FlowFactory(Protocol):
    """Builds a flow from a job's args: ``factory(**job.args)`` returns a flow (or a task)."""

    def __call__(self, **args: Any) -> Any: ...


class FlowRegistry:
    """Maps flow names to factories. Conductors build every job's flow through one.

    Example::

        flows = FlowRegistry()

        @flows.register("hello")
        def hello_flow(**args):
            return linear("hello", greet)
    """

    def __init__(self) -> None:
        self._factories: dict[str, FlowFactory] = {}
        self._static: dict[str, Flow] = {}
        self._retry: dict[str, RetryPolicy] = {}
        self._args: dict[str, type[pydantic.BaseModel]] = {}

    @overload
    def register(
        self,
        name: str,
        *,
        retry: RetryPolicy | None = None,
        args: type[pydantic.BaseModel] | None = None,
    ) -> Callable[[FlowFactory], FlowFactory]: ...

    @overload
    def register(
        self,
        name: str,
        factory: FlowFactory,
        *,
        retry: RetryPolicy | None = None,
        args: type[pydantic.BaseModel] | None = None,
    ) -> FlowFactory: ...

    @overload
    def register(
        self,
        name: str,
        factory: _StaticFlow,
        *,
        retry: RetryPolicy | None = None,
        args: type[pydantic.BaseModel] | None = None,
    ) -> _StaticFlow: ...

    def register(
        self,
        name: str,
        factory: FlowFactory | Flow | Task | None = None,
        *,
        retry: RetryPolicy | None = None,
        args: type[pydantic.BaseModel] | None = None,
    ) -> FlowFactory | Flow | Task | Callable[[FlowFactory], FlowFactory]:
        """Register ``factory`` under ``name`` and return it; without a factory, return a
        decorator.

        Args:
            name: the name jobs give as their ``flow``.
            factory: builds the flow from a job's args; or the flow itself (a ``Flow``, or a
                ``Task`` run as a flow of that one task named ``name``), the same for every
                job, its args only its inputs. A flow registered as it is lets a conductor
                whose store shares the board's server create each new run's logbook with the
                job's claim: one server call a job less (:meth:`static`).
            retry: run a job of this flow again, later, when its flow ends ``REVERTED`` or
                ``FAILURE``; a policy given at ``post`` wins over this one.
            args: a pydantic model the job's args must fit. A conductor validates them before
                it builds the flow (a job whose args do not fit is trashed with the errors,
                never run); the factory and the tasks get the validated values, dumped in JSON
                mode (so the store saves them and a resumed run sees the same). Producers that
                hold the registry check them before posting with :meth:`post`.

        Raises:
            ConfigurationError: the name is empty or already taken, the factory is not a
                plain callable (an ``async def`` cannot build a flow), or ``args`` is not a
                pydantic model class.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"a flow name must be a non-empty string, got {name!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        if args is not None and not (
            isinstance(args, type) and issubclass(args, pydantic.BaseModel)
        ):
            raise ConfigurationError(f"args must be a pydantic model class, got {args!r:.80}")

        def add(fn: FlowFactory) -> FlowFactory:
            if name in self._factories:
                raise ConfigurationError(f"a flow is already registered as {name!r}")
            if not callable(fn):
                raise ConfigurationError(f"the factory of flow {name!r} is not callable")
            if inspect.iscoroutinefunction(fn):
                raise ConfigurationError(
                    f"the factory of flow {name!r} is an async function; a factory must "
                    f"return its flow directly (a plain def)"
                )
            self._factories[name] = fn
            if retry is not None:
                self._retry[name] = retry
            if args is not None:
                self._args[name] = args
            return fn

        if isinstance(factory, Task | Flow):
            flow = factory if isinstance(factory, Flow) else linear(name, factory)
            add(_StaticFactory(flow))
            self._static[name] = flow
            return factory
        return add(factory) if factory is not None else add

    def get(self, name: str) -> FlowFactory:
        """The factory registered as ``name``.

        Raises:
            FlowNotFound: nothing is registered under that name.
        """
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories)) or "none"
            raise FlowNotFound(f"no flow is registered as {name!r} (known: {known})") from None

    def static(self, name: str) -> Flow | None:
        """The flow registered under ``name`` as it is (not by a factory), or None: every job
        of it runs that flow, so its shape is known before a job is claimed."""
        return self._static.get(name)

    def retry_policy(self, name: str) -> RetryPolicy | None:
        """The retry policy flow ``name`` was registered with, if any."""
        return self._retry.get(name)

    def args_model(self, name: str) -> type[pydantic.BaseModel] | None:
        """The args model flow ``name`` was registered with, if any."""
        return self._args.get(name)

    def check_args(self, name: str, args: Mapping[str, Any] | pydantic.BaseModel | None) -> Any:
        """The args of a job of flow ``name``, validated by its args model and dumped in JSON
        mode (as given, or a model dumped, when the flow has no model).

        Raises:
            FlowNotFound: nothing is registered under ``name``.
            PayloadError: the args do not fit the model (pydantic's errors, one per line).
        """
        self.get(name)
        model = self._args.get(name)
        if isinstance(args, pydantic.BaseModel):
            args = args.model_dump(mode="json")
        if model is None:
            return {} if args is None else args
        try:
            return model.model_validate(args or {}).model_dump(mode="json")
        except pydantic.ValidationError as exc:
            raise PayloadError(
                f"the args do not fit flow {name!r} ({model.__name__}): {args_errors(exc)}"
            ) from None

    async def post(
        self,
        board: JobBoard,
        flow: str,
        args: Mapping[str, Any] | pydantic.BaseModel | None = None,
        *,
        name: str | None = None,
        key: str | None = None,
        **options: Unpack[PostOptions],
    ) -> Job:
        """Check the job against this registry, then post it: the flow must be registered and
        the args fit its args model (validated and dumped in JSON mode).

        Args:
            board: where the job is posted.
            flow: the registered flow.
            args: the job's args, a mapping or a pydantic model.
            name: the job's name (default: the flow's).
            key: an idempotency key, as :meth:`JobBoard.post
                <aioconductor.boards.base.JobBoard.post>` takes it.
            **options: the post's options, as :meth:`JobBoard.post
                <aioconductor.boards.base.JobBoard.post>` takes them.

        Raises:
            FlowNotFound: ``flow`` is not registered; nothing was written.
            PayloadError: the args do not fit (pydantic's errors) or a bad option; nothing was
                written.
        """
        checked = self.check_args(flow, args)
        return await board.post(flow if name is None else name, flow, checked, key=key, **options)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._factories))

    def __len__(self) -> int:
        return len(self._factories)

    @classmethod
    def load(cls, spec: str) -> FlowRegistry:
        """Import a registry from ``"package.module:attribute"``.

        Raises:
            ConfigurationError: the spec is malformed, the module cannot be imported, or the
                attribute is not a ``FlowRegistry``.
        """
        registry = load_attribute(spec, "registry")
        if not isinstance(registry, FlowRegistry):
            raise ConfigurationError(f"{spec!r} is a {type(registry).__name__}, not a FlowRegistry")
        return registry


class _StaticFactory:
    """The factory of a flow registered as it is: returns that flow, whatever the args."""

    __slots__ = ("flow",)

    def __init__(self, flow: Flow) -> None:
        self.flow = flow

    def __call__(self, **args: Any) -> Flow:
        return self.flow

    def __repr__(self) -> str:
        return f"<the flow {self.flow.name!r}, registered as it is>"


def args_errors(exc: pydantic.ValidationError) -> str:
    """Pydantic's errors as one line each: ``field.path: message``, joined by ``; ``."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "args"
        lines.append(f"{where}: {error['msg']}")
    return "; ".join(lines)
