"""A small MQTT client for tests: subscribe, publish, and wait for what arrives."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from gmqtt import Client

Received = tuple[str, bytes, bool]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching with ``+`` and ``#``."""
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for index, part in enumerate(f_parts):
        if part == "#":
            return True
        if index >= len(t_parts):
            return False
        if part != "+" and part != t_parts[index]:
            return False
    return len(f_parts) == len(t_parts)


class TestClient:
    """A connected gmqtt client that queues everything it receives."""

    __test__ = False  # not a test class

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.received: asyncio.Queue[Received] = asyncio.Queue()
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self._client = Client(f"test-{uuid.uuid4().hex[:10]}")
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._backlog: list[Received] = []

    async def connect(self) -> TestClient:
        await self._client.connect(self.host, self.port)
        return self

    async def close(self) -> None:
        await self._client.disconnect()

    def _on_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: Any
    ) -> int:
        retain = bool(properties.get("retain", 0)) if properties else False
        self.received.put_nowait((topic, payload, retain))
        return 0

    def _on_subscribe(self, client: Any, mid: int, qos: Any, properties: Any) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe and wait for the broker's SUBACK."""
        future = asyncio.get_running_loop().create_future()
        mid = self._client.subscribe(topic_filter, qos=qos)
        self._subacks[mid] = future
        await asyncio.wait_for(future, 5.0)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain)
        await asyncio.sleep(0)

    async def expect(
        self,
        topic_filter: str,
        predicate: Callable[[bytes], bool] | None = None,
        timeout: float = 5.0,
    ) -> Received:
        """Wait for a message matching ``topic_filter`` (and ``predicate``); others are kept."""
        for index, item in enumerate(self._backlog):
            if topic_matches(topic_filter, item[0]) and (predicate is None or predicate(item[1])):
                return self._backlog.pop(index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = [(t, p[:80]) for t, p, _ in self._backlog[-10:]]
                raise TimeoutError(
                    f"nothing matching {topic_filter!r} within {timeout} s; saw {seen}"
                )
            try:
                item = await asyncio.wait_for(self.received.get(), remaining)
            except TimeoutError:
                continue
            if topic_matches(topic_filter, item[0]) and (predicate is None or predicate(item[1])):
                return item
            self._backlog.append(item)

    async def collect_until_marker(
        self, topic_filter: str, marker_topic: str, timeout: float = 5.0
    ) -> list[Received]:
        """Everything matching ``topic_filter`` that arrives before a marker we publish now.

        The broker delivers in order on one subscription, so once our own marker arrives,
        everything sent before it (retained messages included) has arrived too.
        """
        token = uuid.uuid4().hex.encode()
        await self.publish(marker_topic, token, qos=1)
        got: list[Received] = []
        while True:
            item = await self.expect(topic_filter, timeout=timeout)
            if item[0] == marker_topic and item[1] == token:
                return got
            got.append(item)
