"""Importing an object named ``"package.module:attribute"`` (the command line's ``--app`` and
``--schedules``)."""

from __future__ import annotations

import importlib

from aioconductor.errors import ConfigurationError

__all__ = ["load_attribute"]


def load_attribute(spec: str, what: str) -> object:
    """The attribute ``spec`` names, as ``"package.module:attribute"``.

    Raises:
        ConfigurationError: the spec is malformed (naming ``what`` in the expected form), or
            the module cannot be imported, or it has no such attribute.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"expected 'package.module:{what}', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no {attribute!r}") from None
