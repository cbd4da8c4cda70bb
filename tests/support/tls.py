"""A throw-away certificate authority (openssl CLI) and a private RabbitMQ node with TLS.

`make_pki(dir)` writes a CA, a server certificate for localhost/127.0.0.1 and a client
certificate, all signed by that CA, plus a second CA that signed nothing (for "untrusted"
tests). `start_tls_node(pki)` boots a node like the session's, with an extra TLS listener
that requires a client certificate from the CA.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.rabbitmq import RabbitMQ, free_ports

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path  # trusted by nobody: the server's certificate does not chain to it
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is needed for the TLS tests (apt-get install openssl)")
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> Path:
    _openssl("req", "-x509", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN=multiwatch test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return directory / f"{name}.pem"


def _leaf(directory: Path, name: str, extensions: str) -> tuple[Path, Path]:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
             "-extfile", f"{name}.ext", cwd=directory)
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca, other = _ca(directory, "ca"), _ca(directory, "other-ca")
    server = _leaf(directory, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                   "extendedKeyUsage=serverAuth\n")
    client = _leaf(directory, "client", "extendedKeyUsage=clientAuth\n")
    return Pki(ca, other, *server, *client)


def start_tls_node(pki: Pki) -> tuple[RabbitMQ, int]:
    """A private node with its plain listener plus TLS on the returned port (client certs
    required). Stop it with `.stop()`."""
    node = RabbitMQ._prepare()
    [tls_port] = free_ports(1)
    node.ctl_env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] += (
        f' -rabbit ssl_listeners [{{"127.0.0.1",{tls_port}}}]'
        f' -rabbit ssl_options [{{cacertfile,"{pki.ca}"}},{{certfile,"{pki.server_cert}"}},'
        f'{{keyfile,"{pki.server_key}"}},{{verify,verify_peer}},{{fail_if_no_peer_cert,true}}]'
    )
    try:
        node._spawn()
        node._await_ready(120.0)
    except BaseException:
        node.stop()
        raise
    return node, tls_port
