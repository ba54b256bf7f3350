"""A TLS-only PostgreSQL cluster: a CA made here, a server certificate for 127.0.0.1, a client certificate.

pg_hba accepts TCP connections only over TLS, with a password and a client certificate that the CA signed
(``clientcert=verify-full``), so a client that drops any of sslmode, sslrootcert, sslcert or sslkey fails.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.postgres import Cluster

ROLE = "wsbackup"
PASSWORD = "tls-only-secret-pw"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _sign(subject: str, key: ec.EllipticCurvePrivateKey, ca: x509.Certificate | None, ca_key, **kw) -> x509.Certificate:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca.subject if ca else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if ca is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if kw.get("san"):
        builder = builder.add_extension(x509.SubjectAlternativeName(kw["san"]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(where: Path) -> TlsFiles:
    where.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _sign("WedSync test CA", ca_key, None, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _sign(
        "localhost",
        server_key,
        ca,
        ca_key,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _sign(ROLE, client_key, ca, ca_key)
    files = TlsFiles(
        where / "ca.crt", where / "server.crt", where / "server.key", where / "client.crt", where / "client.key"
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(files.server_key, server_key)
    files.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(files.client_key, client_key)
    return files


@dataclass
class TlsCluster:
    cluster: Cluster
    files: TlsFiles

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        """A superuser connection over the Unix socket (the only way in without TLS)."""
        return psycopg.connect(
            host=str(self.cluster.socket_dir), port=self.cluster.port, user="postgres", dbname=dbname, autocommit=True
        )

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.cluster.socket_dir} port={self.cluster.port} user=postgres dbname={dbname}"

    def connection_extra(self, application_name: str) -> dict[str, object]:
        return {
            "sslmode": "verify-full",
            "sslrootcert": str(self.files.ca),
            "sslcert": str(self.files.client_cert),
            "sslkey": str(self.files.client_key),
            "keepalives": True,
            "keepalives_idle": 30,
            "connect_timeout": 5,
            "options": "-c statement_timeout=0",
            "application_name": application_name,
        }


def tls_cluster() -> Iterator[TlsCluster]:
    base = Path(tempfile.mkdtemp(prefix="wedsync-test-tls-"))
    os.chmod(base, 0o755)
    cluster = Cluster(base / "data", settings={"fsync": "off", "synchronous_commit": "off"})
    cluster.init()
    server_dir = cluster.datadir / "tls"
    files = make_certificates(base / "client")
    server_dir.mkdir()
    for f in (files.ca, files.server_cert, files.server_key):
        shutil.copy(f, server_dir / f.name)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (server_dir, *server_dir.iterdir()):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    (server_dir / "server.key").chmod(0o600)
    (cluster.datadir / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n"
        "hostnossl all all 0.0.0.0/0 reject\n"
    )
    cluster.settings.update(
        ssl="on",
        ssl_cert_file=str(server_dir / "server.crt"),
        ssl_key_file=str(server_dir / "server.key"),
        ssl_ca_file=str(server_dir / "ca.crt"),
    )
    cluster.start()
    tls = TlsCluster(cluster, files)
    try:
        with tls.admin() as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        yield tls
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
