"""Building and copying the library's own pydantic models on the hot path, without validation.

Every job passes through several ``Job``, ``Claim`` and store-detail objects, built from data
the library wrote itself or has already validated. pydantic's ``model_construct`` and
``model_copy`` cost several microseconds each (they look up aliases, defaults and private
attributes per call); these helpers do the same work for models that have none of those, in a
fraction of the time. Data from outside (a caller, a payload) is still validated where it
enters.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["build", "build_from", "copy_json", "evolve"]

M = TypeVar("M", bound=BaseModel)

_set = object.__setattr__
#: Models checked to be buildable this way (no private attributes, no post-init hook), with
#: the set of their field names that all their built instances share (see ``_build``).
_plain: dict[type[BaseModel], set[str]] = {}


def _fields_of(cls: type[BaseModel]) -> set[str]:
    fields = _plain.get(cls)
    if fields is None:
        if cls.__private_attributes__ or cls.__pydantic_post_init__ or cls.__pydantic_root_model__:
            raise TypeError(f"{cls.__name__} has private attributes or hooks: validate it")
        if cls.model_config.get("extra") == "allow":
            raise TypeError(f"{cls.__name__} allows extra fields: validate it")
        fields = _plain[cls] = set(cls.__pydantic_fields__)
    return fields


def build(cls: type[M], /, **values: Any) -> M:
    """An instance of ``cls`` holding ``values`` as given: trusted data, no validation.

    ``values`` must name every field of ``cls``: there is no default filling, so a field
    added to a model later is an error here, not a silent gap.
    """
    return _build(cls, values)


def build_from(cls: type[M], values: dict[str, Any], /) -> M:
    """:func:`build` from a dict of ``values``, which the instance takes over (not copied: the
    caller must not change it afterwards)."""
    return _build(cls, values)


def _build(cls: type[M], values: dict[str, Any]) -> M:
    fields = _fields_of(cls)
    if len(values) != len(fields) or not fields.issuperset(values):
        missing = sorted(fields.difference(values))
        extra = sorted(set(values).difference(fields))
        raise TypeError(f"{cls.__name__}: missing fields {missing}, unknown fields {extra}")
    model = cls.__new__(cls)
    _set(model, "__dict__", values)
    # Every field is set, so every instance shares one set of all the names: pydantic only
    # ever adds to it (on assignment), which cannot change it. A set per instance was a
    # third of an in-flight job's memory.
    _set(model, "__pydantic_fields_set__", fields)
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


def evolve(model: M, **changes: Any) -> M:
    """A shallow copy of ``model`` with ``changes`` applied, not validated (trusted values of
    the right types; unknown names are refused)."""
    values = model.__dict__.copy()
    values.update(changes)
    return _build(type(model), values)


def copy_json(value: Any) -> Any:
    """A copy of a JSON value sharing no dict or list with it.

    Engines write every atom state change, so this beats ``copy.deepcopy`` (about ten times
    faster on the small values atoms hold); anything else is copied the slow way.
    """
    if value is None or type(value) in _SCALARS:
        return value
    if type(value) is dict:
        return {key: copy_json(item) for key, item in value.items()}
    if type(value) is list:
        return [copy_json(item) for item in value]
    if isinstance(value, str | int | float | bool):
        return value
    return copy.deepcopy(value)


_SCALARS = frozenset({str, int, float, bool})
