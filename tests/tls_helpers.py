"""TLS test support: a test CA, a server certificate for 127.0.0.1 it signed, and a second CA
that signed nothing here (a client trusting only that one must refuse the server)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

from tests.conftest import service_missing


@dataclasses.dataclass(frozen=True)
class Certificates:
    """The files :func:`make_certificates` wrote (PEM, keys unencrypted)."""

    #: The CA that signed the server's certificate: what a client should trust.
    ca: Path
    #: A CA that signed nothing here: a client trusting only it must refuse the server.
    other_ca: Path
    #: The server's certificate, for ``127.0.0.1`` and ``localhost`` (CN and subjectAltName).
    server_cert: Path
    server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=folder,
    )  # fmt: skip


def make_certificates(folder: Path) -> Certificates:
    """Write a CA, another CA and a server certificate signed by the first into ``folder``;
    skips (fails under CI) without ``openssl``."""
    if not shutil.which("openssl"):
        service_missing("openssl (to make test certificates)")
    folder.mkdir(parents=True, exist_ok=True)
    _make_ca(folder, "ca")
    _make_ca(folder, "other-ca")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr", cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.crt", "-extfile", "ext.cnf", cwd=folder,
    )  # fmt: skip
    return Certificates(
        ca=folder / "ca.crt",
        other_ca=folder / "other-ca.crt",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
    )
