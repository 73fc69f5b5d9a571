"""Transport security for every gRPC hop: TLS, mutual TLS between the services, and
certificate files that are read again when they change (no restart).

One frozen `TlsConfig` per process, read from the environment:

- ``VISEARCH_TLS_CERT`` / ``VISEARCH_TLS_KEY``: this process's PEM certificate chain and
  private key. A server presents them; a service that calls others (the gateway) presents
  the same pair as its client certificate.
- ``VISEARCH_TLS_CA``: PEM bundle of the CA(s) that peers' certificates must chain to: the
  servers the process calls, and the clients a server requires certificates of.
- ``VISEARCH_TLS_CLIENT_AUTH``: whether a server requires a client certificate signed by
  ``VISEARCH_TLS_CA`` (mutual TLS). Default: true for the internal services, false for the
  gateway, whose public port serves clients that hold no certificate.
- ``VISEARCH_TLS_SERVER_NAME``: the name checked in the servers' certificates in place of
  the host of the address dialled (optional).

TLS is off when none of the three files is named. A named file that does not exist fails
at start-up. Servers re-read their files when one changes (size, mtime or inode: a
Kubernetes Secret volume swaps a symlink), through gRPC's dynamic server credentials, so a
renewed certificate is served to new connections without a restart; a half-written pair
(certificate and key that do not match) is ignored until it is complete. A channel that
presents a client certificate (the gateway's, to the other services) is made again for
later calls when its files change (`services.common.grpc_client.ReloadingChannel`).

Clients of the gateway (the CLI, the training job) read ``VISEARCH_GATEWAY_TLS_CA``,
``VISEARCH_GATEWAY_TLS_CERT`` / ``_KEY`` (mutual TLS, optional) and
``VISEARCH_GATEWAY_TLS_SERVER_NAME`` instead (`TlsConfig.gateway_client_from_env`).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.config import env_bool
from services.common.errors import ConfigError

log = logging.getLogger(__name__)
FileStamp = tuple[tuple[int, int, int], ...]
# The variables of each role: certificate, key, CA, client auth, server name.
SERVER_VARIABLES = (
    "VISEARCH_TLS_CERT",
    "VISEARCH_TLS_KEY",
    "VISEARCH_TLS_CA",
    "VISEARCH_TLS_CLIENT_AUTH",
    "VISEARCH_TLS_SERVER_NAME",
)
# The gateway's calls to the embedder, shards and verifier (default: SERVER_VARIABLES' files).
INTERNAL_VARIABLES = (
    "VISEARCH_INTERNAL_TLS_CERT",
    "VISEARCH_INTERNAL_TLS_KEY",
    "VISEARCH_INTERNAL_TLS_CA",
    "VISEARCH_INTERNAL_TLS_CLIENT_AUTH",
    "VISEARCH_INTERNAL_TLS_SERVER_NAME",
)
# Clients of the gateway: the CLI, the training job.
GATEWAY_CLIENT_VARIABLES = (
    "VISEARCH_GATEWAY_TLS_CERT",
    "VISEARCH_GATEWAY_TLS_KEY",
    "VISEARCH_GATEWAY_TLS_CA",
    "VISEARCH_GATEWAY_TLS_CLIENT_AUTH",
    "VISEARCH_GATEWAY_TLS_SERVER_NAME",
)


@dataclass(frozen=True)
class TlsConfig:
    """PEM file paths ("" = not given) and the client-certificate policy of a server."""

    cert: str = ""
    key: str = ""
    ca: str = ""
    require_client_cert: bool = False
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ConfigError("a TLS certificate and its private key go together: name both")
        if self.require_client_cert and not self.ca:
            raise ConfigError("requiring client certificates needs a CA bundle to verify them")
        for path in (self.cert, self.key, self.ca):
            if path and not Path(path).is_file():
                raise ConfigError(f"TLS file {path} does not exist")

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        client_auth_default: bool,
        variables: tuple[str, str, str, str, str] = SERVER_VARIABLES,
    ) -> TlsConfig | None:
        """The process's TLS settings, or None when TLS is off (no file named)."""
        cert_var, key_var, ca_var, auth_var, name_var = variables
        cert, key, ca = (env.get(name, "") for name in (cert_var, key_var, ca_var))
        if not (cert or key or ca):
            return None
        for name, path in ((cert_var, cert), (key_var, key), (ca_var, ca)):
            if path and not Path(path).is_file():
                raise ConfigError(f"{name} names {path}, which does not exist")
        if bool(cert) != bool(key):
            raise ConfigError(f"{cert_var} and {key_var} go together: set both or neither")
        require = env_bool(env, auth_var, client_auth_default)
        if require and not ca:
            raise ConfigError(f"{auth_var} needs {ca_var} to verify client certificates")
        return cls(cert, key, ca, require, env.get(name_var, ""))

    @classmethod
    def gateway_client_from_env(cls, env: Mapping[str, str]) -> TlsConfig | None:
        """How a client reaches the gateway (VISEARCH_GATEWAY_TLS_*), or None (plaintext)."""
        return cls.from_env(env, client_auth_default=False, variables=GATEWAY_CLIENT_VARIABLES)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.cert, self.key, self.ca) if p)

    def stamp(self) -> FileStamp:
        """What changes when any of the files is rewritten or swapped."""
        stamps = []
        for path in self.paths:
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _check_pair(cert: str, key: str) -> None:
    """Raises ssl.SSLError/OSError unless the key belongs to the certificate."""
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)


class ReloadingServerCertificates:
    """The fetcher of `grpc.dynamic_ssl_server_credentials`: gRPC asks it at each new
    handshake; it answers a new configuration only when the files changed."""

    def __init__(self, tls: TlsConfig) -> None:
        if not tls.cert:
            raise ConfigError("a TLS server needs VISEARCH_TLS_CERT and VISEARCH_TLS_KEY")
        self._tls = tls
        self._lock = threading.Lock()
        self._stamp = tls.stamp()
        self._rejected: FileStamp | None = None
        self.reloads = 0
        self.initial = self._load()

    def _load(self) -> grpc.ServerCertificateConfiguration:
        tls = self._tls
        _check_pair(tls.cert, tls.key)
        pair = (_read(tls.key), _read(tls.cert))
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=_read(tls.ca))

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                stamp = self._tls.stamp()
            except OSError:
                return None  # a file is being replaced: keep serving the current pair
            if stamp in (self._stamp, self._rejected):
                return None
            try:
                config = self._load()
                if self._tls.stamp() != stamp:
                    return None  # changed again while read: take it at the next handshake
            except (OSError, ssl.SSLError) as exc:
                self._rejected = stamp
                log.warning("TLS files changed but do not load (%s); keeping the old ones", exc)
                return None
            self._stamp = stamp
            self.reloads += 1
            log.info("TLS certificate files reloaded")
            return config


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Server credentials that serve the files' current certificate to each new connection."""
    fetcher = ReloadingServerCertificates(tls)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial, fetcher, require_client_authentication=tls.require_client_cert
    )


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """Verifies servers against the CA (the system roots when none is named) and presents
    the client certificate when one is named (read now, at channel creation)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca),
        private_key=_read(tls.key),
        certificate_chain=_read(tls.cert),
    )


def channel_options(tls: TlsConfig | None) -> list[tuple[str, str]]:
    if tls is not None and tls.server_name:
        return [("grpc.ssl_target_name_override", tls.server_name)]
    return []
