"""`FlowRegistry`: the names a job's ``flow`` field may take, each with its factory."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Protocol, overload

from aioconductor.errors import ConfigurationError
from aioconductor.errors import FlowNotFound
from aioconductor.models import RetryPolicy

__all__ = ["FlowFactory", "FlowRegistry"]


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
        self._retry: dict[str, RetryPolicy] = {}

    @overload
    def register(
        self, name: str, *, retry: RetryPolicy | None = None
    ) -> Callable[[FlowFactory], FlowFactory]: ...

    @overload
    def register(
        self, name: str, factory: FlowFactory, *, retry: RetryPolicy | None = None
    ) -> FlowFactory: ...

    def register(
        self, name: str, factory: FlowFactory | None = None, *, retry: RetryPolicy | None = None
    ) -> FlowFactory | Callable[[FlowFactory], FlowFactory]:
        """Register ``factory`` under ``name``; without a factory, return a decorator.

        Args:
            name: the name jobs give as their ``flow``.
            factory: builds the flow from a job's args.
            retry: run a job of this flow again, later, when its flow ends ``REVERTED`` or
                ``FAILURE``; a policy given at ``post`` wins over this one.

        Raises:
            ConfigurationError: the name is empty or already taken, or the factory is not a
                plain callable (an ``async def`` cannot build a flow).
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"a flow name must be a non-empty string, got {name!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {type(retry).__name__}")

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
            return fn

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

    def retry_policy(self, name: str) -> RetryPolicy | None:
        """The retry policy flow ``name`` was registered with, if any."""
        return self._retry.get(name)

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
        module_name, sep, attribute = spec.partition(":")
        if not sep or not module_name or not attribute:
            raise ConfigurationError(f"expected 'package.module:registry', got {spec!r}")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
        try:
            registry = getattr(module, attribute)
        except AttributeError:
            raise ConfigurationError(f"module {module_name!r} has no {attribute!r}") from None
        if not isinstance(registry, FlowRegistry):
            raise ConfigurationError(f"{spec!r} is a {type(registry).__name__}, not a FlowRegistry")
        return registry
