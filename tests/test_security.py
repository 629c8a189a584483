"""Security against real peers: MQTT over TLS with a test CA made here, client certificates,
username and password; the HTTP endpoints behind basic auth and TLS; no secret in logs."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import logging
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gmqtt.mqtt.handler import MQTTConnectError

from config.settings import MqttSettings
from protocols.mqtt import MqttClient
from service.runtime.broker import EmbeddedBroker, find_mosquitto, free_port
from tests.daemon_helpers import daemon_settings, running_daemon

pytestmark = pytest.mark.broker

PASSWORD = "s3cret-Pa55word"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )  # fmt: skip
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the broker can read after it drops root privileges (it runs as the
    ``mosquitto`` user when started as root, and pytest's own temporary directories are
    private). The test keys in it are throwaway."""
    path = Path(tempfile.mkdtemp(prefix="fleetwatch-tls-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pki(shared_dir: Path) -> Pki:
    """A test CA, a server certificate for 127.0.0.1, a client certificate, a rogue CA."""
    tmp_path = shared_dir

    def pem(cert: x509.Certificate, name: str) -> Path:
        path = tmp_path / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("FleetWatch test CA", ca_key, None, ca=True)
    issuer = (ca.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    paths = Pki(
        ca=pem(ca, "ca.pem"),
        server_cert=pem(_certificate("127.0.0.1", server_key, issuer, server=True), "server.pem"),
        server_key=tmp_path / "server.key",
        client_cert=pem(_certificate("fleetwatch", client_key, issuer), "client.pem"),
        client_key=tmp_path / "client.key",
        rogue_ca=pem(_certificate("Rogue CA", rogue_key, None, ca=True), "rogue.pem"),
    )
    _write_key(server_key, paths.server_key)
    _write_key(client_key, paths.client_key)
    for path in shared_dir.iterdir():
        path.chmod(0o644)
    return paths


@pytest.fixture
async def tls_broker(shared_dir: Path, pki: Pki):  # type: ignore[no-untyped-def]
    """A mosquitto with a plain listener (for the test client) and a TLS listener that
    requires a client certificate and knows one user."""
    if find_mosquitto() is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto with mosquitto_passwd is needed for the TLS listener")
    passwords = shared_dir / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwords), "fleetwatch", PASSWORD],
        check=True,
        timeout=30,
        capture_output=True,
    )
    passwords.chmod(0o644)
    tls_port = free_port()
    extra = (
        f"password_file {passwords}",
        f"listener {tls_port} 127.0.0.1",
        f"cafile {pki.ca}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        "require_certificate true",
    )
    async with EmbeddedBroker(prefer="mosquitto", extra_config=extra) as broker:
        yield broker, tls_port


def tls_mqtt(pki: Pki, port: int, ca: Path, password: str = PASSWORD) -> dict[str, object]:
    return {
        "port": port,
        "username": "fleetwatch",
        "password": password,
        "tls": {
            "enabled": True,
            "ca_file": str(ca),
            "cert_file": str(pki.client_cert),
            "key_file": str(pki.client_key),
        },
    }


async def test_daemon_over_tls_with_client_certificate_and_password(
    tls_broker, pki: Pki, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    from tests.mqtt_helpers import TestClient

    broker, tls_port = tls_broker
    settings = daemon_settings(
        broker.host, broker.port, topic_prefix, mqtt=tls_mqtt(pki, tls_port, pki.ca)
    )
    watcher = await TestClient(broker.host, broker.port).connect()
    try:
        await watcher.subscribe(f"{topic_prefix}/fleetwatch/alerts/#")
        async with running_daemon(settings) as daemon:
            assert daemon.mqtt.connected.is_set()
            await watcher.publish(
                f"{topic_prefix}/fleet/s1/d1/telemetry",
                orjson.dumps({"ts": 1_767_225_600, "battery_v": 3.0}),
            )
            _, payload, _ = await watcher.expect(
                f"{topic_prefix}/fleetwatch/alerts/rule.battery_low/d1", timeout=10
            )
            assert orjson.loads(payload)["state"] == "firing"
    finally:
        await watcher.close()


@pytest.mark.parametrize("wrong", ["certificate authority", "password"])
async def test_untrusted_broker_or_wrong_password_never_connects_and_logs_no_secret(
    tls_broker, pki: Pki, wrong: str, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    broker, tls_port = tls_broker
    caplog.set_level(logging.DEBUG)
    if wrong == "password":
        data = tls_mqtt(pki, tls_port, pki.ca, password="not-" + PASSWORD)
    else:
        data = tls_mqtt(pki, tls_port, pki.rogue_ca)
    settings = MqttSettings.model_validate(
        {**data, "host": broker.host, "reconnect_min_s": 0.1, "reconnect_max_s": 0.2}
    )
    client = MqttClient(settings)
    if wrong == "password":
        # refused credentials are final: the error says so, it does not retry forever
        with pytest.raises(MQTTConnectError):
            await asyncio.wait_for(client.connect(), 10)
    else:
        connect = asyncio.create_task(client.connect())

        async def failed_twice() -> None:
            while client.failed_attempts < 2:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(failed_twice(), 10)
        assert not client.connected.is_set()
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
        connect.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connect
    await client.close()
    assert PASSWORD not in caplog.text
    assert "not-" + PASSWORD not in caplog.text
    assert PASSWORD not in repr(settings)


async def test_http_endpoints_behind_basic_auth_over_tls(
    broker, pki: Pki, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    settings = daemon_settings(
        broker.host,
        broker.port,
        topic_prefix,
        http={
            "port": 0,
            "username": "prometheus",
            "password": PASSWORD,
            "tls_cert_file": str(pki.server_cert),
            "tls_key_file": str(pki.server_key),
        },
    )
    trust = ssl.create_default_context(cafile=str(pki.ca))
    async with running_daemon(settings) as daemon, aiohttp.ClientSession() as session:
        base = f"https://127.0.0.1:{daemon.http_port}"
        async with session.get(f"{base}/metrics", ssl=trust) as response:
            assert response.status == 401
            assert PASSWORD not in await response.text()
        wrong = {"Authorization": basic_auth("prometheus", "guess")}
        async with session.get(f"{base}/metrics", ssl=trust, headers=wrong) as response:
            assert response.status == 401
        right = {"Authorization": basic_auth("prometheus", PASSWORD)}
        async with session.get(f"{base}/metrics", ssl=trust, headers=right) as response:
            assert response.status == 200
            assert "fleetwatch_readings_total" in await response.text()
        async with session.get(f"{base}/healthz", ssl=trust) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            rogue = ssl.create_default_context(cafile=str(pki.rogue_ca))
            async with session.get(f"{base}/healthz", ssl=rogue):
                pass
