"""`rediss://` checks the server's certificate *and* its hostname (issue 12, item 8).

Against a real redis-server listening on TLS only, with a throwaway CA made here: a certificate
that the CA signed for ``other.example`` must be refused for 127.0.0.1 (it would hand the ACL
password to an impostor and let it forge records and intents), the right one accepted, and
switching the checks off takes an explicit option and logs a warning.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from posguard.actors.store.client import TlsOptions, open_redis, tls_context
from posguard.supervisor.config import load_config, redis_connection
from posguard.supervisor.redis_server import free_port

PASSWORD = "tls-test-pw"
PASSWORD_ENV = {"PG_TLS_REDIS_PW": PASSWORD}

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


@dataclass
class Pki:
    ca: Path
    right: tuple[Path, Path]
    """Certificate and key for IP 127.0.0.1."""
    wrong: tuple[Path, Path]
    """Certificate and key for DNS other.example, signed by the same CA."""


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "posguard test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (where / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def server_cert(name: str, san: x509.GeneralName) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = where / f"{name}.crt", where / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        return cert_path, key_path

    return Pki(
        ca=where / "ca.pem",
        right=server_cert("localhost-ip", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        wrong=server_cert("other.example", x509.DNSName("other.example")),
    )


def _tls_redis(pki: Pki, cert: tuple[Path, Path], workdir: Path) -> Iterator[int]:
    """A redis-server on TLS only (no plain port), requiring PASSWORD; yields its port."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
         "--tls-cert-file", str(cert[0]), "--tls-key-file", str(cert[1]), "--tls-ca-cert-file", str(pki.ca),
         "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--dir", str(workdir), "--save", "",
         "--appendonly", "no", "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # wait for the listening socket (a condition, with a deadline)
            assert process.poll() is None, (workdir / "redis.log").read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "TLS redis-server did not listen within 10 s"
                time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def right_server(pki: Pki, tmp_path: Path) -> Iterator[int]:
    yield from _tls_redis(pki, pki.right, tmp_path)


@pytest.fixture
def impostor(pki: Pki, tmp_path: Path) -> Iterator[int]:
    yield from _tls_redis(pki, pki.wrong, tmp_path)


def _config(tmp_path: Path, port: int, extra: str = ""):  # noqa: ANN202
    path = tmp_path / "posguard.toml"
    path.write_text(f'[redis]\nurl = "rediss://127.0.0.1:{port}/0"\npassword_env = "PG_TLS_REDIS_PW"\n{extra}')
    return load_config(path)


async def _ping(connection) -> object:  # noqa: ANN001
    async with open_redis(connection) as client:
        return await client.ping()


@pytest.mark.asyncio_backend
async def test_rediss_refuses_a_certificate_for_another_hostname(pki: Pki, impostor: int, tmp_path: Path) -> None:
    config = _config(tmp_path, impostor, f'ssl_ca_certs = "{pki.ca}"\n')
    with pytest.raises(Exception) as caught:  # noqa: B017 - what matters is that nothing gets through
        await _ping(redis_connection(config, environ=PASSWORD_ENV))
    assert "127.0.0.1" in repr(caught.value) or "hostname" in repr(caught.value).lower() \
        or "certificate" in repr(caught.value).lower()
    assert PASSWORD not in repr(caught.value)


@pytest.mark.asyncio_backend
async def test_rediss_accepts_the_right_certificate_with_the_password_from_the_environment(
    pki: Pki, right_server: int, tmp_path: Path
) -> None:
    config = _config(tmp_path, right_server, f'ssl_ca_certs = "{pki.ca}"\n')
    assert await _ping(redis_connection(config, environ=PASSWORD_ENV)) in (True, "PONG", b"PONG")


@pytest.mark.asyncio_backend
async def test_rediss_refuses_a_certificate_no_trusted_ca_signed(right_server: int, tmp_path: Path) -> None:
    config = _config(tmp_path, right_server)  # no ssl_ca_certs: the system CAs, which never signed it
    with pytest.raises(Exception):  # noqa: B017
        await _ping(redis_connection(config, environ=PASSWORD_ENV))


@pytest.mark.asyncio_backend
async def test_skipping_the_checks_takes_an_explicit_option_and_warns(
    impostor: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(tmp_path, impostor, "tls_insecure_skip_verify = true\n")
    with caplog.at_level(logging.WARNING):
        assert await _ping(redis_connection(config, environ=PASSWORD_ENV)) in (True, "PONG", b"PONG")
    assert "redis.tls_insecure_skip_verify" in caplog.text
    assert PASSWORD not in caplog.text


def test_the_default_tls_context_checks_certificate_and_hostname() -> None:
    context = tls_context(TlsOptions())
    assert context.check_hostname is True
    assert context.verify_mode is ssl.CERT_REQUIRED
