"""The flow registry: names to factories, loaded from an import string."""

from __future__ import annotations

import pytest

from aioconductor.errors import ConfigurationError, FlowNotFound
from aioconductor.registry import FlowRegistry


def test_register_as_decorator_and_directly() -> None:
    flows = FlowRegistry()

    @flows.register("a")
    def make_a(**args: object) -> str:
        return "a"

    flows.register("b", lambda **args: "b")
    assert flows.get("a") is make_a and flows.get("b")() == "b"
    assert "a" in flows and "c" not in flows
    assert list(flows) == ["a", "b"] and len(flows) == 2


def test_a_flow_registered_as_it_is_is_every_jobs_flow() -> None:
    from aioconductor import Task, linear

    class Echo(Task):
        async def execute(self, key: object) -> object:
            return key

    one = Echo("one")
    chain = linear("chain", Echo("first"), Echo("second"))
    flows = FlowRegistry()
    assert flows.register("chain", chain) is chain
    assert flows.register("single", one, retry=None) is one
    flows.register("factory", lambda **args: chain)
    # A flow as it is; a task as a flow of that one task, named as registered.
    assert flows.static("chain") is chain
    single = flows.static("single")
    assert single is not None and single.name == "single"
    assert [child.name for child in single] == ["one"]
    assert flows.static("factory") is None and flows.static("missing") is None
    # Its factory gives that same flow, whatever the args (they are its inputs).
    assert flows.get("chain")(key=1, other=2) is chain
    assert flows.get("single")() is single
    assert "chain" in flows and len(flows) == 3
    with pytest.raises(ConfigurationError, match="already registered"):
        flows.register("chain", chain)


def test_unknown_flow_names_the_known_ones() -> None:
    flows = FlowRegistry()
    flows.register("known", lambda **args: None)
    with pytest.raises(FlowNotFound, match=r"'unknown' .*known: known"):
        flows.get("unknown")


def test_bad_registrations_are_refused() -> None:
    flows = FlowRegistry()
    flows.register("taken", lambda **args: None)
    with pytest.raises(ConfigurationError, match="already registered"):
        flows.register("taken", lambda **args: None)
    with pytest.raises(ConfigurationError, match="non-empty"):
        flows.register("", lambda **args: None)
    with pytest.raises(ConfigurationError, match="not callable"):
        flows.register("x", 42)  # type: ignore[call-overload]


def test_load_from_an_import_string() -> None:
    from tests.apps import flows

    assert FlowRegistry.load("tests.apps:flows") is flows


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.apps", "package.module:registry"),
        ("no.such.module:flows", "cannot import"),
        ("tests.apps:missing", "has no 'missing'"),
        ("tests.apps:Step", "not a FlowRegistry"),
    ],
)
def test_load_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        FlowRegistry.load(spec)
