"""A throwaway certificate authority with server and client certificates, for tests and local TLS runs.

Production brokers use certificates from the plant's own PKI; this exists so that TLS is exercised
for real (a real handshake against a real Mosquitto) without anyone running openssl by hand.
Keys are written mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qctrace.durable import atomic_write


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: CertPair
    server: CertPair
    clients: dict[str, CertPair]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qctrace throwaway"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(out: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> CertPair:
    pair = CertPair(out / f"{stem}.crt", out / f"{stem}.key")
    atomic_write(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    atomic_write(pair.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    pair.key.chmod(0o600)
    return pair


def _issue(cn: str, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey, *, ca: bool = False,
           hosts: tuple[str, ...] = (), client: bool = False, days: int = 30
           ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer if not ca else _name(cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False),
                            critical=True)
    else:
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return key, b.sign(key if ca else signer, hashes.SHA256())


def throwaway_pki(out: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), clients: tuple[str, ...] = (),
                  ca_name: str = "qctrace throwaway CA") -> Pki:
    """A fresh CA under ``out``, a server certificate for ``hosts`` and one client certificate per name
    (the client's common name is its name, so Mosquitto's ``use_identity_as_username`` can map it)."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _issue(ca_name, _name(ca_name), None, ca=True)  # type: ignore[arg-type]
    ca = _write(out, "ca", ca_key, ca_cert)
    s_key, s_cert = _issue(hosts[0], ca_cert.subject, ca_key, hosts=hosts)
    server = _write(out, "server", s_key, s_cert)
    made = {}
    for name in clients:
        c_key, c_cert = _issue(name, ca_cert.subject, ca_key, client=True)
        made[name] = _write(out, f"client-{name}", c_key, c_cert)
    return Pki(ca, server, made)



if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.stdout.write("usage: python -m qctrace.certs DIR [CLIENT_NAME ...]\n"
                         "  writes a throwaway CA, a server certificate (127.0.0.1) and client certificates\n")
        sys.exit(0 if len(sys.argv) > 1 else 2)
    made = throwaway_pki(Path(sys.argv[1]), clients=tuple(sys.argv[2:]))
    sys.stdout.write(f"CA {made.ca.cert}\nserver {made.server.cert} {made.server.key}\n")
    for n, p in made.clients.items():
        sys.stdout.write(f"client {n} {p.cert} {p.key}\n")
