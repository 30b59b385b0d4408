"""What every store saves as JSON is read back as it was saved, or refused.

JSON object keys are strings: a result, revert result or meta holding a dict with a key that is
not a str (``{1: "a"}``) would come back changed (``{"1": "a"}``), and ``{1: "a", "1": "b"}``
would lose a value. Every store refuses such a detail with ``StoreError``, nothing written, as a
board refuses such a payload: the memory store too, although it encodes nothing, so that a flow
that runs on it runs on every store.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any

import msgspec

from aioconductor._fastjson import encode_plain
from aioconductor._fastjson import plain
from aioconductor._payload import non_str_key
from aioconductor.errors import StoreError
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import Intention

__all__ = ["atom_json", "check_atoms", "check_meta", "dumps"]

#: One encoder for every call: ``json.dumps`` with options builds a new one each time.
_ENCODE = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
#: msgspec's encoder, for values already found plain (see ``_fastjson``).
_encode_known = msgspec.json.Encoder().encode


def dumps(what: str, value: Any) -> str:
    """``value`` as strict JSON text; ``StoreError`` if JSON cannot carry it as it is."""
    fast = encode_plain(value)
    if fast is not None:
        return fast.decode("utf-8")
    try:
        text = _ENCODE(value)
        # After encoding, which refused cycles and nesting deeper than this walk can go.
        problem = non_str_key(value)
    except (TypeError, ValueError) as exc:
        # Refused by json (a set, NaN, a tuple key): say what it is and where.
        problem = str(exc)
        with contextlib.suppress(RecursionError):  # a value holding itself: json's word
            problem = _problem(value) or problem
    except RecursionError as exc:
        problem = str(exc) or type(exc).__name__
    if problem is not None:
        raise StoreError(f"{what} cannot be saved as JSON: {problem}")
    return text


def atom_json(atom: AtomDetail) -> str:
    """An atom's fields but its name and version as strict JSON text; ``StoreError`` if JSON
    cannot carry one as it is."""
    fields = atom.__dict__
    if fields["failure"] is None and fields["revert_failure"] is None:
        fast = _known_atom_json(fields)
        if fast is not None:
            return fast
        # No model inside: the fields as they are (an enum is written as its value).
        fast_bytes = encode_plain({k: v for k, v in fields.items() if k not in _NOT_IN_ATOM_JSON})
        if fast_bytes is not None:
            return fast_bytes.decode("utf-8")
    what = f"atom {atom.name!r}"
    try:
        # Python mode, not "json": that mode would quietly turn NaN into null, a set into a
        # list and the key 1 into "1", so what was read back would not be what was saved.
        data = atom.model_dump(mode="python", exclude={"name", "version"})
    except ValueError as exc:  # pydantic's PydanticSerializationError
        raise StoreError(f"{what} cannot be saved as JSON: {exc}") from None
    return dumps(what, data)


#: The fields of an atom that :func:`atom_json` leaves out (its store keeps them apart).
_NOT_IN_ATOM_JSON = frozenset({"name", "version"})


def _known_atom_json(fields: dict[str, Any]) -> str | None:
    """:func:`atom_json`'s text for an atom without failures whose known fields have their
    own types (a str kind, the enums), walking only its free-form values (result, revert
    result, meta), which :func:`plain` checks; None for any other atom (the caller's path)."""
    kind, state, intention = fields["kind"], fields["state"], fields["intention"]
    if type(kind) is not str or type(state) is not AtomState or type(intention) is not Intention:
        return None
    result, revert_result, meta = fields["result"], fields["revert_result"], fields["meta"]
    if not (
        (result is None or plain(result))
        and (revert_result is None or plain(revert_result))
        and ((type(meta) is dict and not meta) or plain(meta))
    ):
        return None
    # The atom's fields but its name and version, in the model's order, as the general
    # path writes them.
    value = {
        "kind": kind,
        "state": state,
        "intention": intention,
        "result": result,
        "failure": None,
        "revert_result": revert_result,
        "revert_failure": None,
        "meta": meta,
    }
    try:
        return _encode_known(value).decode("utf-8")
    except Exception:  # a lone surrogate: the general path refuses or explains
        return None


def check_meta(what: str, value: Any) -> None:
    """Refuse ``value`` (``StoreError``) if it holds a key that is not a str, or a value strict
    JSON cannot carry (NaN or an infinity, a set, any other object), at any depth: a store
    that encodes would change it (NaN read back as None, a set as a list), and one that keeps
    objects (memory) refuses it too, so that what runs on one store runs on every store."""
    try:
        problem = _problem(value)
    except RecursionError:
        problem = "it is nested too deeply (or holds itself)"
    if problem is not None:
        raise StoreError(f"{what} cannot be saved as JSON: {problem}")


def check_atoms(atoms: Iterable[AtomDetail]) -> None:
    """Refuse (``StoreError``) an atom whose result, revert result or meta holds a key that
    is not a str, at any depth; the error names the atom and where the key is."""
    for atom in atoms:
        fields = {"result": atom.result, "revert_result": atom.revert_result, "meta": atom.meta}
        check_meta(f"atom {atom.name!r}", fields)


def _problem(value: Any) -> str | None:
    """What strict JSON cannot carry as it is in ``value``, and where; None if nothing."""
    if plain(value):
        return None
    return non_str_key(value) or _first_not_json(value, "")


def _first_not_json(value: Any, path: str) -> str:
    """What the first value strict JSON cannot carry in ``value`` is, and where (``value``
    holds one, and no key that is not a str)."""
    if isinstance(value, dict | list | tuple):
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in pairs:
            if not plain(item):
                return _first_not_json(item, f"{path}[{key!r}]")
    where = f" in {path}" if path else ""
    if isinstance(value, float):
        return f"{value!r}{where} is not JSON (strict JSON has no NaN or infinity)"
    return f"a {type(value).__name__}{where} is not JSON (use a list, a dict, a str or a number)"
