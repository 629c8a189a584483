"""Shared fixtures: a private MQTT broker per test, unique topics, a test MQTT client."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from service.runtime.broker import EmbeddedBroker, Prefer
from tests.mqtt_helpers import TestClient


def _preferred_broker() -> Prefer:
    choice = os.environ.get("FLEETWATCH_TEST_BROKER", "auto")
    return choice if choice in ("auto", "mosquitto", "amqtt") else "auto"  # type: ignore[return-value]


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    """A private broker on 127.0.0.1 and a free port (mosquitto, else amqtt)."""
    async with EmbeddedBroker(prefer=_preferred_broker()) as running:
        yield running


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:8]}"


class ClientFactory:
    def __init__(self, broker: EmbeddedBroker) -> None:
        self.broker = broker
        self.clients: list[TestClient] = []

    async def __call__(self) -> TestClient:
        client = await TestClient(self.broker.host, self.broker.port).connect()
        self.clients.append(client)
        return client


@pytest.fixture
async def mqtt_factory(
    broker: EmbeddedBroker,
) -> AsyncIterator[Callable[[], Awaitable[TestClient]]]:
    factory = ClientFactory(broker)
    yield factory
    for client in factory.clients:
        await client.close()


@pytest.fixture
async def mqtt_client(mqtt_factory: Callable[[], Awaitable[TestClient]]) -> TestClient:
    """A connected test client on the test broker."""
    return await mqtt_factory()
