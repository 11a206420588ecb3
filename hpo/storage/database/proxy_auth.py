"""Who may talk to `hpo storage-proxy`: the shared token, and TLS, on both of its ports.

The proxy can read and change every study in its database, so it serves only clients that
present a shared secret, the same on the proxy and on every worker:

* ``$HPO_PROXY_TOKEN``, or ``$HPO_PROXY_TOKEN_FILE`` naming a file that holds it (a Docker or
  Kubernetes Secret mounted as a file, so that it is in no manifest and no environment). Never an
  option: a command-line argument is visible to every user in ``ps``.
* Clients send it with every call (gRPC metadata and the HTTP header ``authorization: Bearer
  TOKEN``); the proxy compares it in constant time (:func:`token_matches`) and refuses anything
  else with one line that never quotes what was sent.
* TLS: the proxy serves both ports over TLS when given ``--tls-cert``/``--tls-key``; clients turn
  it on with ``$HPO_PROXY_CA_FILE`` (the CA to trust, e.g. a self-signed certificate) or with
  ``?tls=1`` in the storage URL (the system's CAs).

Example::

    auth = client_auth("grpc://proxy:13000?tls=1")   # reads the environment once
    auth.header()                                      # ('authorization', 'Bearer ...') or None
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from hpo.errors import HpoError

TOKEN_VAR = "HPO_PROXY_TOKEN"
TOKEN_FILE_VAR = "HPO_PROXY_TOKEN_FILE"
CA_VAR = "HPO_PROXY_CA_FILE"
HEADER = "authorization"  # gRPC metadata keys are lower case; HTTP headers ignore case
SCHEME = "Bearer "
MIN_TOKEN_CHARS = 16  # shorter is guessable; `openssl rand -hex 24` makes 48


def proxy_token() -> str | None:
    """The shared token from ``$HPO_PROXY_TOKEN`` or the file ``$HPO_PROXY_TOKEN_FILE``; None if neither is set.

    Both set is a mistake (which one wins would be a guess), as is an empty, short or
    non-printable token: each is an HpoError that names the variable, never the value.
    """
    value, path = os.environ.get(TOKEN_VAR), os.environ.get(TOKEN_FILE_VAR)
    if value and path:
        raise HpoError(f"both ${TOKEN_VAR} and ${TOKEN_FILE_VAR} are set: keep one")
    if path:
        try:
            value, origin = Path(path).read_text(encoding="utf-8").strip(), f"the file ${TOKEN_FILE_VAR} names ({path})"
        except (OSError, UnicodeDecodeError) as exc:
            raise HpoError(f"${TOKEN_FILE_VAR} = {path}: cannot read the proxy token "
                           f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    elif value:
        value, origin = value.strip(), f"${TOKEN_VAR}"
    else:
        return None
    if len(value) < MIN_TOKEN_CHARS or not value.isascii() or not value.isprintable() or " " in value:
        raise HpoError(f"the proxy token in {origin} must be at least {MIN_TOKEN_CHARS} printable ASCII characters "
                       "without spaces: make one with `openssl rand -hex 24`")
    return value


def token_matches(presented: str | None, token: str) -> bool:
    """Whether ``presented`` (an authorization value) carries ``token``, in constant time."""
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "replace"), (SCHEME + token).encode())


@dataclass(frozen=True)
class ClientAuth:
    """What a client of the proxy presents: the token (or None) and whether and whom to trust over TLS.

    ``ca_pem`` None with ``tls`` True means the system's certificate authorities.
    """

    token: str | None = None
    tls: bool = False
    ca_pem: bytes | None = None

    def header(self) -> tuple[str, str] | None:
        return (HEADER, SCHEME + self.token) if self.token else None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client side of TLS for the artifact port (None without TLS)."""
        if not self.tls:
            return None
        return ssl.create_default_context(cadata=self.ca_pem.decode("ascii") if self.ca_pem else None)

    def __repr__(self) -> str:  # never the token, even in a traceback's locals
        return f"ClientAuth(token={'set' if self.token else 'none'}, tls={self.tls})"


def refusal(where: str, auth: ClientAuth) -> str:
    """The one line a refused client prints: what it sent (never the value) and where to fix it."""
    sent = "a token that is not the proxy's" if auth.token else "no token"
    return f"the storage proxy at {where} refused this client: it sent {sent}; set ${TOKEN_VAR} or ${TOKEN_FILE_VAR} to the proxy's token"


def client_auth(url: str) -> ClientAuth:
    """A client's credentials for the proxy at ``url``: the token from the environment, TLS when
    ``$HPO_PROXY_CA_FILE`` is set or the URL says ``?tls=1``."""
    ca_path = os.environ.get(CA_VAR)
    wanted = parse_qs(url.partition("?")[2]).get("tls", [""])[-1]
    if wanted not in ("", "0", "1"):
        raise HpoError(f"storage URL: tls must be 0 or 1, not {wanted!r}")
    ca_pem = None
    if ca_path:
        ca_pem = _read_pem(ca_path, f"${CA_VAR}")
    return ClientAuth(token=proxy_token(), tls=bool(ca_path) or wanted == "1", ca_pem=ca_pem)


@dataclass(frozen=True)
class ServerTls:
    """The proxy's certificate chain and key: their paths (for ``ssl``) and PEM bytes (for gRPC), read once at start."""

    cert_path: str
    key_path: str
    cert_pem: bytes
    key_pem: bytes

    def ssl_context(self) -> ssl.SSLContext:
        """The server side of TLS for the artifact port."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)  # ssl loads a chain from files only
        return context


def server_tls(cert: str | None, key: str | None) -> ServerTls | None:
    """The proxy's TLS material from ``--tls-cert``/``--tls-key`` (both or neither), checked now."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise HpoError("--tls-cert and --tls-key go together: give both (PEM files) or neither")
    tls = ServerTls(cert, key, _read_pem(cert, "--tls-cert"), _read_pem(key, "--tls-key"))
    try:
        tls.ssl_context()
    except ssl.SSLError as exc:
        raise HpoError(f"--tls-cert {cert} / --tls-key {key}: not a certificate and its key ({exc.reason or exc})") from None
    return tls


def _read_pem(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise HpoError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    if b"-----BEGIN " not in data:
        raise HpoError(f"{what} {path}: not a PEM file (expected -----BEGIN ...)")
    return data


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is this machine's own (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)
