"""The cluster's certificates: one CA, serving certs, client certs (one per identity).

Kubernetes authenticates components by x509 client certificates (CN = user, O = groups) and
RBAC/Node authorization decides from those names, so each component gets its own identity as
in a kubeadm cluster. Keys are ECDSA P-256: a few milliseconds each, where RSA-2048 would
make certificate generation a visible part of the cluster's start time.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


class ClusterPki:
    """A CA in ``directory`` that issues the cluster's certificates into the same folder."""

    def __init__(self, directory: Path, name: str) -> None:

        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}-ca")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256()))
        self.ca = CertFiles(directory / "ca.crt", directory / "ca.key")
        _write(self.ca.cert, _cert_pem(self._cert))
        _write(self.ca.key, _key_pem(self._key))

    def issue(self, name: str, common_name: str, *, groups: tuple[str, ...] = (),
              dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
              server: bool = False) -> CertFiles:
        """Issue ``<name>.crt``/``<name>.key``: a client cert, or a serving cert (``server``)
        valid for the given DNS names and IP addresses."""

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
            + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self._cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if dns or ips:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        files = CertFiles(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        _write(files.cert, _cert_pem(builder.sign(self._key, hashes.SHA256())))
        _write(files.key, _key_pem(key))
        return files

    def key_pair(self, name: str) -> CertFiles:
        """A bare key pair (``<name>.key`` and ``<name>.pub``), e.g. to sign service account
        tokens; returned as ``CertFiles(cert=<public key>, key=<private key>)``."""

        key = ec.generate_private_key(ec.SECP256R1())
        files = CertFiles(self.directory / f"{name}.pub", self.directory / f"{name}.key")
        _write(files.cert, key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        _write(files.key, _key_pem(key))
        return files


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def write_kubeconfig(path: Path, *, server: str, ca: Path, client: CertFiles,
                     user: str, cluster: str = "zeropod-lab") -> Path:
    """A kubeconfig for ``user`` (JSON, which is YAML too: kubectl, client-go and the Python
    client all read it) that trusts ``ca`` and authenticates with ``client``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server,
                                                   "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(client.cert),
                                          "client-key": str(client.key)}}],
        "contexts": [{"name": f"{user}@{cluster}", "context": {"cluster": cluster,
                                                               "user": user}}],
        "current-context": f"{user}@{cluster}",
        "preferences": {},
    }
    _write(path, json.dumps(config, indent=2).encode())
    return path
