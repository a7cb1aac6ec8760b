"""The cluster CA and per-node certificates for the node-to-node service (mutual TLS).

Every node's manager holds a certificate signed by one cluster CA; the server asks for and
verifies the client's certificate against that CA, and the client verifies the server's
against it too, so only nodes of the cluster can pull images (which hold process memory).
Keys are ECDSA P-256. A node certificate is valid for both server and client authentication
and names the node's addresses (IP and DNS SANs), which the client checks.

For now the CA lives in files (``ca.crt``, ``ca.key``) or is passed in; keeping it in a
Kubernetes Secret comes with the cluster integration.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
NODE_VALIDITY = datetime.timedelta(days=365)
CA_CERT, CA_KEY = "ca.crt", "ca.key"
NODE_CERT, NODE_KEY = "node.crt", "node.key"


class TlsSetupError(RuntimeError):
    """Certificates or keys are missing or unusable; the message names the file."""


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class ClusterCA:
    """The CA that signs every node's certificate (PEM)."""

    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def create(cls, name: str = "zeropod-migration-ca") -> ClusterCA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + CA_VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False),
                    critical=True)
                .sign(key, hashes.SHA256()))
        return cls(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    @classmethod
    def load(cls, folder: Path) -> ClusterCA:
        return cls(_read(folder / CA_CERT), _read(folder / CA_KEY))

    @classmethod
    def load_or_create(cls, folder: Path) -> ClusterCA:
        """The CA in ``folder``, created there (key mode 0600) when there is none."""
        if (folder / CA_CERT).exists() or (folder / CA_KEY).exists():
            return cls.load(folder)
        ca = cls.create()
        ca.save(folder)
        return ca

    def save(self, folder: Path) -> None:
        _write_private(folder, CA_CERT, self.cert_pem)
        _write_private(folder, CA_KEY, self.key_pem)

    def issue(self, node_name: str, addresses: Sequence[str]) -> NodeCredentials:
        """A key and certificate for one node, valid for the given IPs and DNS names."""
        ca_cert = x509.load_pem_x509_certificate(self.cert_pem)
        ca_key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise TlsSetupError("the cluster CA key is not an EC key")
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for address in dict.fromkeys([node_name, *addresses]):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(address)))
            except ValueError:
                names.append(x509.DNSName(address))
        now = _now()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
                .issuer_name(ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + NODE_VALIDITY)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        return NodeCredentials(ca_pem=self.cert_pem,
                               cert_pem=cert.public_bytes(serialization.Encoding.PEM),
                               key_pem=_key_pem(key))


@dataclass(frozen=True)
class NodeCredentials:
    """What one node's manager needs for mutual TLS: the CA certificate, its own pair."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def load(cls, folder: Path) -> NodeCredentials:
        return cls(_read(folder / CA_CERT), _read(folder / NODE_CERT), _read(folder / NODE_KEY))

    def save(self, folder: Path) -> None:
        _write_private(folder, CA_CERT, self.ca_pem)
        _write_private(folder, NODE_CERT, self.cert_pem)
        _write_private(folder, NODE_KEY, self.key_pem)

    @property
    def node_name(self) -> str:
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else ""


def node_credentials(folder: Path, node_name: str, addresses: Sequence[str]) -> NodeCredentials:
    """This node's credentials from ``folder``: loaded when ``node.crt`` is there, otherwise
    issued by the CA in that folder (which must then hold ``ca.key``) and saved."""
    if (folder / NODE_CERT).exists():
        return NodeCredentials.load(folder)
    if not (folder / CA_KEY).exists():
        raise TlsSetupError(f"{folder}: neither {NODE_CERT} nor the CA key {CA_KEY} to issue one")
    creds = ClusterCA.load(folder).issue(node_name, addresses)
    creds.save(folder)
    return creds


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsSetupError(f"cannot read {path}: {exc.strerror}") from exc


def _write_private(folder: Path, name: str, data: bytes) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(folder / name)
