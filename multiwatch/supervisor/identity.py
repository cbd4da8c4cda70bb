"""Proof that an endpoint is the supervisor of this roster, not whoever holds its port.

When its endpoint is listening, the supervisor writes
`<state_dir>/endpoint-<host>_<port>-net<N>.json` (N: its network namespace's inode; mode 0600,
replaced atomically): its pid, the listen address and a fresh random secret.
A client that can read the file (the supervisor's user, or root) sends a random challenge in
the `X-Multiwatch-Challenge` header; the endpoint answers with `X-Multiwatch-Proof`, an
HMAC-SHA256 under the secret of the challenge, the path and the body. Another program that
took the port cannot compute it, and cannot alter a body it relays from the real endpoint.

The file is trusted only if it is a regular file (no symlink), readable by its owner alone,
and owned by the reader, by root, or (when root reads) by the owner of the state directory:
nobody else can create a file with that owner.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass

CHALLENGE_HEADER = "X-Multiwatch-Challenge"
PROOF_HEADER = "X-Multiwatch-Proof"
_CHALLENGE_RE = re.compile(r"[0-9a-f]{32,128}")
_MAX_FILE_BYTES = 4096


class IdentityError(Exception):
    """The identity file is missing, unreadable or not trustworthy; the message says why."""


@dataclass(frozen=True)
class EndpointIdentity:
    """What the supervisor published about its endpoint."""

    path: str
    pid: int
    listen: str
    secret: bytes


def identity_path(state_dir: str, listen: str) -> str:
    """The file for the endpoint on `listen` in this network namespace.

    Supervisors may share a state_dir, and a port belongs to a network namespace: replicas
    in two containers on one state volume (compose --scale) both listen on 0.0.0.0:9120.
    Each namespace has its own file, so neither replaces the other's secret; `status`
    (run inside the container, as `docker compose exec` does) reads its own namespace's."""
    name = re.sub(r"[^A-Za-z0-9.-]", "_", listen.strip().replace("[", "").replace("]", ""))
    return os.path.join(state_dir, f"endpoint-{name}{_network_namespace()}.json")


def _network_namespace() -> str:
    """`-net<inode>` of this process's network namespace; "" where /proc does not say."""
    try:
        return f"-net{os.stat('/proc/self/ns/net').st_ino}"
    except OSError:
        return ""


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def publish_identity(state_dir: str, listen: str, pid: int, secret: bytes) -> EndpointIdentity:
    """Write the identity file (0600, atomically); OSError if the state_dir refuses it."""
    path = identity_path(state_dir, listen)
    data = json.dumps({"pid": pid, "listen": listen, "secret": secret.hex()}).encode()
    temporary = f"{path}.{pid}.tmp"
    try:  # left over by a supervisor that died with this pid: start afresh, never reuse it
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    return EndpointIdentity(path, pid, listen, secret)


def withdraw_identity(identity: EndpointIdentity) -> None:
    """Remove the file if it is still this one (a newer supervisor may have replaced it)."""
    try:
        current = _load(identity.path)
    except (IdentityError, OSError):
        return
    if current.secret == identity.secret:
        try:
            os.unlink(identity.path)
        except OSError:
            pass


def read_identity(state_dir: str, listen: str) -> EndpointIdentity:
    """The published identity for `listen`, checked as the module doc says; IdentityError
    (naming the file and what is wrong) otherwise."""
    path = identity_path(state_dir, listen)
    try:
        try:
            return _load(path)
        except FileNotFoundError:
            # A supervisor started by a multiwatch before per-namespace files wrote this name.
            return _load(re.sub(r"-net[0-9]+\.json$", ".json", path))
    except FileNotFoundError:
        raise IdentityError(f"{path} does not exist: no supervisor of this roster has its "
                            f"endpoint on {listen} (is `multiwatch run` running?)") from None
    except PermissionError:
        raise IdentityError(f"cannot read {path}: permission denied (run this as the user "
                            "the supervisor runs as, or as root)") from None
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror or exc}") from None


def _load(path: str) -> EndpointIdentity:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        _check_trusted(path, info)
        raw = os.read(fd, _MAX_FILE_BYTES)
    finally:
        os.close(fd)
    try:
        doc = json.loads(raw)
        return EndpointIdentity(path, int(doc["pid"]), str(doc["listen"]),
                                bytes.fromhex(doc["secret"]))
    except (ValueError, KeyError, TypeError):
        raise IdentityError(f"{path} is not an endpoint identity file") from None


def _check_trusted(path: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise IdentityError(f"{path} is not a regular file; not trusting it")
    if info.st_mode & 0o077:
        raise IdentityError(f"{path} is accessible to other users (mode "
                            f"{stat.S_IMODE(info.st_mode):04o}); not trusting it")
    me = os.geteuid()
    trusted = {me, 0}
    if me == 0:
        trusted.add(os.stat(os.path.dirname(path)).st_uid)
    if info.st_uid not in trusted:
        raise IdentityError(f"{path} belongs to uid {info.st_uid}, not to you or root; "
                            "not trusting it")


# ---------------------------------------------------------------- challenge and proof


def valid_challenge(value: str | None) -> bool:
    return value is not None and _CHALLENGE_RE.fullmatch(value) is not None


def new_challenge() -> str:
    return secrets.token_hex(32)


def proof(secret: bytes, challenge: str, path: str, body: bytes) -> str:
    """The endpoint's answer to `challenge` for the response `body` to GET `path`."""
    message = b"\n".join([challenge.encode(), path.encode(), hashlib.sha256(body).digest()])
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def proof_matches(secret: bytes, challenge: str, path: str, body: bytes,
                  given: str | None) -> bool:
    return given is not None and hmac.compare_digest(proof(secret, challenge, path, body), given)


def pid_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    return True
