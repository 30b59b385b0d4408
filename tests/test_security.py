"""Security: no code from data, hostile namespaces refused, passwords never shown, tenants apart.

Fast tests, run with the rest of the suite (not marked ``chaos``). Backends come from the
registry (``tests/backends.py``), so a new backend is covered by joining it. What the conformance
suite already proves (one tenant cannot list, claim or consume another's jobs) is not repeated
here: this file covers the other verbs, the stores, passwords, running conductors and the command
line.
"""

from __future__ import annotations

import ast
import logging
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

import aioconductor
from aioconductor import (
    BackendUnavailable,
    ClaimLost,
    Conductor,
    ConfigurationError,
    JobNotFound,
    LogBookNotFound,
    open_board,
    open_store,
)
from aioconductor._urls import redact_url
from aioconductor.persistence.models import LogBook

from .backends import BY_NAME, Space, params, with_user

PACKAGE = Path(aioconductor.__file__).resolve().parent

# -- no code from data -----------------------------------------------------------------------------

#: Modules that turn bytes into code or objects: never imported by the package.
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
#: Builtins that run text as code.
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
#: yaml loaders that build arbitrary objects.
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _violations(source: str, where: str) -> list[str]:
    tree = ast.parse(source, filename=where)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            names = []
        line = getattr(node, "lineno", 0)
        found += [f"{where}:{line}: imports {n}" for n in names if n in FORBIDDEN_MODULES]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
            found.append(f"{where}:{node.lineno}: calls {func.id}()")
        if isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else ""
            if owner == "yaml" and func.attr in UNSAFE_YAML:
                found.append(f"{where}:{node.lineno}: yaml.{func.attr}() builds objects")
            if owner == "os" and func.attr in {"system", "popen"}:
                found.append(f"{where}:{node.lineno}: os.{func.attr}() runs a shell")
            if owner in {"builtins", "__builtins__"} and func.attr in FORBIDDEN_CALLS:
                found.append(f"{where}:{node.lineno}: calls {owner}.{func.attr}()")
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                found.append(f"{where}:{node.lineno}: a subprocess with shell=")
    return found


def test_the_package_never_turns_data_into_code() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20, "the scan found no package source"
    found = [
        v for path in sources for v in _violations(path.read_text(), str(path.relative_to(PACKAGE)))
    ]
    assert found == []


def test_the_scan_catches_what_it_looks_for() -> None:
    found = _violations(
        "import pickle\nfrom marshal import loads\nimport yaml\n"
        "eval('1')\nexec('x = 1')\nyaml.load('a')\nyaml.safe_load('a')\n"
        "import subprocess\nsubprocess.run('ls', shell=True)\n",
        "probe.py",
    )
    kinds = sorted(v.split(": ", 1)[1] for v in found)
    assert kinds == [
        "a subprocess with shell=",
        "calls eval()",
        "calls exec()",
        "imports marshal",
        "imports pickle",
        "yaml.load() builds objects",
    ]


# -- hostile namespaces ----------------------------------------------------------------------------

HOSTILE_NAMESPACES = [
    "x'; DROP TABLE jobs; --",
    'x"; DROP SCHEMA public CASCADE; --',
    "DROP TABLE",
    "drop;table",
    "a b",
    "a-b",
    "a.b",
    "a:b",
    "a*",
    "{a}",
    "../etc",
    "Upper",
    "ß",
    "a\x00b",
    "",
    "a" * 49,
]


def _with_namespace(url: str, namespace: str) -> str:
    """``url`` with its namespace replaced (percent-encoded), its other options kept."""
    from urllib.parse import parse_qsl, urlencode

    base, _, query = url.partition("?")
    options = [(k, v) for k, v in parse_qsl(query) if k != "namespace"]
    return f"{base}?{urlencode([('namespace', namespace), *options])}"


@pytest.mark.parametrize("namespace", HOSTILE_NAMESPACES, ids=range(len(HOSTILE_NAMESPACES)))
@pytest.mark.parametrize("space", params(), indirect=True)
async def test_hostile_namespaces_are_refused_and_create_nothing(
    space: Space, namespace: str, tmp_path: Path
) -> None:
    url = space.board_url("safe")
    before = await _footprint(space.backend, tmp_path)
    with pytest.raises(ConfigurationError, match="namespace"):
        open_board(_with_namespace(url, namespace))
    with pytest.raises(ConfigurationError, match="namespace"):
        open_board(url, namespace=namespace)
    if BY_NAME[space.backend].store:  # kafka has a board, no store
        with pytest.raises(ConfigurationError, match="namespace"):
            open_store(_with_namespace(space.store_url("safe"), namespace))
    assert await _footprint(space.backend, tmp_path) == before


async def _footprint(name: str, tmp_path: Path) -> Any:
    """What a hostile name could have created on the backend: files, keys, schemas, tables."""
    if name == "sqlite":
        return sorted(p.name for p in tmp_path.rglob("*"))
    if name == "redis":
        from tests.redis_helpers import require_redis

        client = require_redis()
        try:
            return sorted(
                key
                for pattern in ("*DROP*", "*drop*", "*'*", '*"*', "*;*", "* *")
                for key in client.scan_iter(match=pattern, count=1000)
            )
        finally:
            client.close()
    if name == "postgres":
        import asyncpg  # type: ignore[import-untyped]

        from tests.conftest import POSTGRES_URL

        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            rows = await conn.fetch(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_schema ~* '(drop|[;\"'' ])' OR table_name ~* '(drop|[;\"'' ])'"
            )
            return sorted(tuple(row) for row in rows)
        finally:
            await conn.close()
    return None


# -- passwords -------------------------------------------------------------------------------------

SECRET = "S3cr3t-chaos-pa55"


def _unreachable(url: str) -> str:
    """``url`` on port 1 of its host, where nothing listens."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + ":1"))


@pytest.mark.parametrize("opener", [open_board, open_store], ids=["board", "store"])
@pytest.mark.parametrize("space", params(passwords=True), indirect=True)
async def test_the_password_never_shows(
    space: Space, opener: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Not in a repr, nor in the errors (and their causes) of a server that cannot be reached,
    nor in those of one connected, nor in the logs."""
    caplog.set_level(logging.DEBUG)
    resource = opener(_unreachable(with_user(space.board_url("secret"), "alice", SECRET)))
    assert SECRET not in repr(resource) and "***" in repr(resource)
    with pytest.raises(BackendUnavailable) as caught:
        await resource.connect()
    for text in _chain(caught.value):
        assert SECRET not in text
    assert "127.0.0.1:1" in str(caught.value)
    async with space.user(SECRET) as user:
        async with opener(with_user(space.board_url("secret"), user, SECRET)) as connected:
            assert SECRET not in repr(connected)
            with pytest.raises((JobNotFound, LogBookNotFound)) as missing:
                if opener is open_board:
                    await connected.get("nope")
                else:
                    await connected.get_logbook("nope")
            assert SECRET not in str(missing.value)
    assert SECRET not in caplog.text


@pytest.mark.parametrize("space", params(passwords=True, kills="tagged"), indirect=True)
async def test_passwords_stay_out_of_logs_reprs_and_errors_while_conductors_run(
    space: Space, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A conductor whose server connections are killed mid-run logs errors that name the
    server; none of them, nor any repr or exception, shows the password."""
    from aioconductor import cli

    from .apps import flows

    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with space.user(SECRET) as user:
        url = with_user(space.board_url(f"sec_{uuid.uuid4().hex[:8]}"), user, SECRET)
        async with open_board(url, poll_interval=0.05) as board, open_store(url) as store:
            conductor = Conductor("sec", board, store=store, flows=flows, lease=1)
            seen += [repr(board), repr(store), repr(conductor), str(board), str(store)]
            jobs = [await board.post(f"j{n}", "noop", {"key": n}) for n in range(20)]
            async with anyio.create_task_group() as tg:
                await tg.start(conductor.run)
                # Every connection of this test's library objects (never another test's).
                await anyio.sleep(0.2)
                await space.kill_connections()
                with anyio.fail_after(30):
                    for job in jobs:
                        await board.wait_for(job.id)
                conductor.stop()
            with pytest.raises(JobNotFound) as missing:
                await board.get("no-such-job")
            seen += _chain(missing.value)
            with pytest.raises(LogBookNotFound) as missing_book:
                await store.get_logbook("no-such-book")
            seen += _chain(missing_book.value)
        # The command line, on the same URL and on an unreachable port.
        unreachable = url.replace("127.0.0.1:", "127.0.0.1:1", 1)
        for argv in (["jobs", "--board", url], ["jobs", "--board", unreachable]):
            await anyio.to_thread.run_sync(cli.main, argv)
            captured = capsys.readouterr()
            seen += [captured.out, captured.err]
    # The URL was shown (redacted) somewhere, so a leak had a chance to happen.
    assert ":***@" in caplog.text + "".join(seen), "no URL was ever shown: a weak test"
    assert SECRET not in caplog.text
    for text in seen:
        assert SECRET not in text


def _chain(error: BaseException | None) -> list[str]:
    texts = []
    while error is not None:
        texts += [str(error), repr(error)]
        error = error.__cause__ or error.__context__
    return texts


# -- secrets in the query string (#16, item 11) ------------------------------------------------

#: Credential options as redis-py (``password``, ``ssl_password``), asyncpg (``password``,
#: ``sslpassword``) and services commonly spell them: masked whatever their case or separators.
SECRET_OPTIONS = [
    "password",
    "PASSWORD",
    "Password",
    "sslpassword",
    "ssl_password",
    "sslPassword",
    "pass%77ord",  # percent-encoded: "password"
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "ssl-key-passphrase",
    "token",
    "access_token",
    "auth",
    "auth_token",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "API-Key",
    "credentials",
    "private_key",
]
#: Options that name no secret: shown as they are.
PLAIN_OPTIONS = "namespace=app&passfile=/home/app/.pgpass&sslkey=/etc/key.pem&author=me&pool_max=4"


@pytest.mark.parametrize("name", SECRET_OPTIONS)
def test_every_credential_query_option_is_masked(name: str) -> None:
    for value in ("hunter2", "hun%74er2", "a%26b=c"):
        url = f"postgresql://app:pw@db:5432/prod?sslmode=require&{name}={value}&{PLAIN_OPTIONS}"
        shown = redact_url(url)
        assert shown == (
            f"postgresql://app:***@db:5432/prod?sslmode=require&{name}=***&{PLAIN_OPTIONS}"
        )


@pytest.mark.parametrize(
    "url",
    [
        f"redis://127.0.0.1:1/0?{PLAIN_OPTIONS}",
        "sqlite:///rel/jobs.db?namespace=a",
        "postgresql://u@[::1]:5432/db?application_name=x&password",  # no value: nothing to mask
        "memory://",
    ],
)
def test_a_url_without_secrets_is_shown_as_written(url: str) -> None:
    assert redact_url(url) == url


REFUSED_URLS = [
    "memory://?password=hunter2&bogus=1",
    "sqlite:///jobs.db?password=hunter2",
    "kafka://127.0.0.1:1?password=hunter2",
    "redis://127.0.0.1:1/0?password=hunter2&bogus=1",
    "redis://127.0.0.1:1/x?password=hunter2",
    "postgresql://u@127.0.0.1:99999/test?password=hunter2",
    "postgresql://u@127.0.0.1:1/test?password=hunter2&namespace=Bad",
]


@pytest.mark.parametrize(
    ("opener", "url"),
    [(open_board, url) for url in REFUSED_URLS]
    + [(open_store, url) for url in REFUSED_URLS if not url.startswith("kafka")],  # no such store
)
def test_a_query_password_stays_out_of_refusals(opener: Any, url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        opener(url)
    for text in _chain(caught.value):
        assert "hunter2" not in text


#: Where each backend's URL can fail once opened: nothing listens on port 1.
UNREACHABLE_URLS = [
    "redis://127.0.0.1:1/0",
    "rediss://127.0.0.1:1/0",
    "postgresql://postgres@127.0.0.1:1/test",
]


@pytest.mark.parametrize("name", SECRET_OPTIONS)
async def test_no_credential_option_shows_in_refusals_or_failed_connects(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every credential option, not only ``password``: a URL refused when opened, or opened and
    failing to connect, shows none of their values in its errors (and their causes), its repr
    or the logs."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for opener in (open_board, open_store):
        for url in REFUSED_URLS:
            if opener is open_store and url.startswith("kafka"):
                continue  # no such store
            with pytest.raises(ConfigurationError) as refused:
                opener(url.replace("password=", f"{name}="))
            seen += _chain(refused.value)
        for url in UNREACHABLE_URLS:
            try:  # an option the driver does not take is refused here; one it takes, later
                resource = opener(f"{url}?{name}=hunter2")
            except ConfigurationError as refused_early:
                seen += _chain(refused_early)
                continue
            seen.append(repr(resource))
            with pytest.raises((BackendUnavailable, ConfigurationError)) as failed:
                await resource.connect()
            seen += _chain(failed.value)
    assert len(seen) > 20
    assert not [text for text in seen if "hunter2" in text]
    assert "hunter2" not in caplog.text


def _query_credentials(backend: str, user: str) -> dict[str, str]:
    """``user`` and SECRET as the query options of ``backend``'s driver: Redis's ``?username=``
    and ``?password=``; PostgreSQL's ``?password=`` and ``?sslpassword=`` (trust authentication
    ignores them; there is no client key for the latter to unlock), the user in the URL."""
    if backend == "redis":
        return {"username": user, "password": SECRET}
    return {"password": SECRET, "sslpassword": SECRET}


@pytest.mark.parametrize("space", params(passwords=True), indirect=True)
async def test_a_query_string_password_never_shows(
    space: Space, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """``?password=`` (both drivers take it) stays out of reprs, the dashboard's header, the
    errors of a failed connect, the logs (PostgreSQL's migration line shows the URL) and the
    command line's output, as the password of the user part does."""
    import httpx

    from aioconductor import cli
    from aioconductor.dashboard import create_app

    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with space.user(SECRET) as user:
        credentials = _query_credentials(space.backend, user)
        url = space.board_url(f"sec_{uuid.uuid4().hex[:8]}", **credentials)
        async with open_board(url) as board, open_store(url) as store:
            seen += [repr(board), repr(store), str(board), str(store)]
            await board.post("j", "noop", {"key": 1})
            transport = httpx.ASGITransport(app=create_app(board, store))
            async with httpx.AsyncClient(transport=transport, base_url="http://dash") as http:
                page = (await http.get("/")).text
            assert "password=***" in page, "the dashboard's header shows no board URL"
            seen.append(page)
        unreachable = url.replace("127.0.0.1:", "127.0.0.1:1", 1)
        for opener in (open_board, open_store):
            resource = opener(unreachable)
            seen.append(repr(resource))
            with pytest.raises(BackendUnavailable) as caught:
                await resource.connect()
            seen += _chain(caught.value)
            assert "password=***" in str(caught.value)
        for argv in (["jobs", "--board", url], ["jobs", "--board", unreachable]):
            await anyio.to_thread.run_sync(cli.main, argv)
            captured = capsys.readouterr()
            seen += [captured.out, captured.err]
    assert "password=***" in captured.err  # the unreachable server's error, on one line
    if space.backend == "postgres":
        migrated = [r.getMessage() for r in caplog.records if r.name == "aioconductor.postgres"]
        assert any("password=***" in line for line in migrated), "no INFO line showed the URL"
    assert SECRET not in caplog.text
    for text in seen:
        assert SECRET not in text


# -- tenants ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", params(), indirect=True)
async def test_one_tenant_cannot_touch_anothers_claimed_job(space: Space) -> None:
    """Beyond list/claim/consume (the conformance suite): renew, abandon, trash (by claim and
    by id) and wait_for from another namespace fail, and change nothing."""
    async with open_board(space.board_url("tenant_a"), poll_interval=0.05) as a:
        async with open_board(space.board_url("tenant_b"), poll_interval=0.05) as b:
            job = await a.post("j", "f", {"secret": "a's"})
            claim = await a.claim(job.id, "owner-a")
            before = await a.get(job.id)
            for attempt in (
                b.renew(claim),
                b.abandon(claim),
                b.trash(claim, reason="b was here"),
                b.trash(job.id, reason="b was here"),
                b.find_owner(job.id),
            ):
                with pytest.raises((JobNotFound, ClaimLost)):
                    await attempt
            with pytest.raises((JobNotFound, TimeoutError)):
                await b.wait_for(job.id, timeout=0.3)
            assert await a.get(job.id) == before
            assert [j.id async for j in b.iterjobs()] == []
            await a.consume(claim)


@pytest.mark.parametrize("space", params(store=True), indirect=True)
async def test_one_tenants_logbooks_are_invisible_to_another(space: Space) -> None:
    async with (
        open_store(space.store_url("tenant_a")) as a,
        open_store(space.store_url("tenant_b")) as b,
    ):
        book = await a.save_logbook(LogBook(uuid=str(uuid.uuid4()), name="a's book"))
        with pytest.raises(LogBookNotFound):
            await b.get_logbook(book.uuid)
        assert (await a.get_logbook(book.uuid)).name == "a's book"
