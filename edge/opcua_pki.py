"""The OPC UA reader's certificates, trust list and credentials.

Layout of the PKI directory (the same shape as the OPC UA reference stacks use)::

    PKI_DIR/own/cert.der            the client's certificate, made on first run
    PKI_DIR/own/private/key.pem     its private key (0600, directory 0700)
    PKI_DIR/trusted/                server certificates the reader trusts (the default trust_dir)
    PKI_DIR/rejected/               certificates of servers that were refused, named by thumbprint

A server whose certificate is not in the trust list is refused before the secure channel is
opened, and its certificate is written to ``rejected/`` so that trusting it is one ``cp`` after an
operator has compared the SHA-256 thumbprint with the one the server shows. Trust is by exact
certificate (thumbprint), as OPC UA's application-instance trust lists work; self-signed PLC
certificates have no CA to chain to.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import stat
from pathlib import Path

from asyncua import ua
from asyncua.crypto import security_policies
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qctrace.config import OpcUaClientConfig
from qctrace.durable import atomic_write
from qctrace.errors import ConfigError, ReaderError

POLICY_CLASSES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}


def thumbprint(der: bytes) -> str:
    """SHA-256 of the DER certificate, as colon-separated hex (what UaExpert and most PLC UIs show)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def _der_of(path: Path) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return data


def _subject(der: bytes) -> str:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return "(unparseable certificate)"
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={cn[0].value}" if cn else cert.subject.rfc4514_string()


async def ensure_client_certificate(pki_dir: Path, application_uri: str) -> tuple[Path, Path]:
    """The client's certificate and key, generated on first run; the key readable only by its owner."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate

    private = pki_dir / "own" / "private"
    private.mkdir(parents=True, exist_ok=True)
    os.chmod(private, 0o700)  # the key is never readable by others, even for the instant before chmod below
    key, cert = private / "key.pem", pki_dir / "own" / "cert.der"
    await setup_self_signed_certificate(key, cert, application_uri, socket.gethostname(),
                                        [ExtendedKeyUsageOID.CLIENT_AUTH],
                                        {"commonName": "qctrace edge reader", "organizationName": "qctrace"})
    os.chmod(key, 0o600)
    (pki_dir / "trusted").mkdir(exist_ok=True)
    return cert, key


class TrustList:
    """Server certificates the reader accepts: every ``*.der``/``*.pem`` in ``trust_dir``, plus any
    the caller vouches for (the demo trusts the simulator it started itself)."""

    def __init__(self, trust_dir: Path, rejected_dir: Path, extra: tuple[Path, ...] = ()) -> None:
        self.trust_dir = trust_dir
        self.rejected_dir = rejected_dir
        self.extra = extra

    def thumbprints(self) -> set[str]:
        files = [*self.extra]
        if self.trust_dir.is_dir():
            files += [p for p in self.trust_dir.iterdir() if p.suffix.lower() in (".der", ".pem", ".crt")]
        return {thumbprint(_der_of(p)) for p in files}

    def check(self, der: bytes, endpoint: str) -> None:
        """Raise with the exact command that trusts this server when it is not trusted."""
        tp = thumbprint(der)
        if tp in self.thumbprints():
            return
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        name = tp.replace(":", "")[:16].lower()
        rejected = self.rejected_dir / f"{name}.der"
        atomic_write(rejected, der)
        raise ReaderError(
            f"{endpoint}: the server's certificate is not trusted ({_subject(der)}, SHA-256 thumbprint {tp}).\n"
            f"If this is the thumbprint your server shows, trust it with:\n"
            f"  mkdir -p {shlex.quote(str(self.trust_dir))} && cp {shlex.quote(str(rejected))}"
            f" {shlex.quote(str(self.trust_dir))}/\n"
            f"then start the reader again. Refused certificates are kept in {self.rejected_dir}.")


def read_password(opts: OpcUaClientConfig, endpoint: str) -> str | None:
    """The password from its environment variable or 0600 file; never from the configuration."""
    if opts.username is None:
        return None
    if opts.password_env:
        pw = os.environ.get(opts.password_env)
        if pw is None:
            raise ConfigError(f"{endpoint}: edge.opcua.password_env names {opts.password_env!r}, which is not set;"
                              f" export {opts.password_env}=… before starting the reader")
        return pw
    path = opts.password_file
    assert path is not None  # the config validator requires one of the two
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"{endpoint}: edge.opcua.password_file {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{endpoint}: edge.opcua.password_file {path} is readable by others"
                          f" (mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {shlex.quote(str(path))}")
    return path.read_text().rstrip("\r\n")


def pick_endpoint(endpoints: list[ua.EndpointDescription], opts: OpcUaClientConfig, url: str
                  ) -> ua.EndpointDescription:
    """The endpoint with exactly the configured policy and mode; never a weaker one instead."""
    policy = POLICY_CLASSES[opts.security_policy]
    mode = getattr(ua.MessageSecurityMode, opts.mode_name)
    for ep in endpoints:
        if ep.SecurityPolicyUri == policy.URI and ep.SecurityMode == mode:
            return ep
    offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name.rstrip('_')}" for e in endpoints})
    raise ReaderError(f"{url}: the server offers no {opts.security_policy}/{opts.mode_name} endpoint (it offers"
                      f" {', '.join(offered) or 'none'}); the reader never falls back to a weaker one. Set"
                      " edge.opcua.security_policy/security_mode to one the server offers"
                      " (security_policy = \"None\" only if talking in clear is acceptable).")
