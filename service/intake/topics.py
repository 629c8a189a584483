"""Topic templates: which levels of an inbound topic carry identity.

A template such as ``fleet/{site}/{device_id}/{kind}`` names its levels; literal levels
must match exactly. Known level names: ``site``, ``zone``, ``gateway``, ``device_id`` and
``kind`` (a :class:`service.records.MessageKind`; a template without ``{kind}`` means
telemetry). The first template that matches wins; a topic no template matches is an error
(counted and dead-lettered, never guessed).

>>> router = TopicRouter(["fleet/{site}/{device_id}/{kind}", "devices/{device_id}/{kind}"])
>>> m = router.match("fleet/plant-a/th-0001/telemetry")
>>> m.device_id, m.kind.value, dict(m.levels)
('th-0001', 'telemetry', {'site': 'plant-a'})
>>> router.match("fleet/plant-a/th-0001/bogus")
Traceback (most recent call last):
...
service.errors.DecodeError: unknown_kind: topic kind 'bogus' is not one of telemetry, status, firmware, batch, calibration (topic fleet/plant-a/th-0001/bogus)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from service.errors import ConfigError, DecodeError
from service.records import MessageKind

KNOWN_LEVELS = frozenset({"site", "zone", "gateway", "device_id", "kind"})
_KINDS = {kind.value: kind for kind in MessageKind}
_KIND_NAMES = ", ".join(_KINDS)
MAX_TOPIC_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class TopicMatch:
    """What a topic said: the device, the message kind and the other named levels."""

    device_id: str
    kind: MessageKind
    levels: Mapping[str, str]


class TopicTemplate:
    """One compiled template."""

    __slots__ = ("_levels", "_size", "text")

    def __init__(self, text: str, setting: str = "topics.templates") -> None:
        self.text = text
        levels: list[tuple[bool, str]] = []
        for part in text.split("/"):
            if part.startswith("{") and part.endswith("}"):
                name = part[1:-1]
                if name not in KNOWN_LEVELS:
                    known = ", ".join(sorted(KNOWN_LEVELS))
                    raise ConfigError(
                        setting, f"{text!r}: unknown level {{{name}}} (known: {known})"
                    )
                levels.append((True, name))
            else:
                if "+" in part or "#" in part or "{" in part or "}" in part:
                    raise ConfigError(setting, f"{text!r}: bad literal level {part!r}")
                levels.append((False, part))
        if (True, "device_id") not in levels:
            raise ConfigError(setting, f"{text!r} has no {{device_id}} level")
        self._levels = tuple(levels)
        self._size = len(levels)

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != self._size:
            return None
        found: dict[str, str] = {}
        for (named, name), part in zip(self._levels, parts, strict=True):
            if named:
                if not part:
                    return None
                found[name] = part
            elif part != name:
                return None
        return found

    def subscription_filter(self) -> str:
        """The MQTT filter that covers this template (named levels become ``+``).

        >>> TopicTemplate("fleet/{site}/{device_id}/{kind}").subscription_filter()
        'fleet/+/+/+'
        """
        return "/".join("+" if named else name for named, name in self._levels)


class TopicRouter:
    """Match topics against templates in order."""

    def __init__(
        self,
        templates: Iterable[str],
        cache_size: int = 200_000,
        setting: str = "topics.templates",
    ) -> None:
        self.templates = tuple(TopicTemplate(text, setting) for text in templates)
        if not self.templates:
            raise ConfigError(setting, "at least one template is needed")
        self._cache: dict[str, TopicMatch] = {}
        self._cache_size = cache_size
        # level values -> one mapping shared by every match with those levels
        self._levels: dict[tuple[str, ...], Mapping[str, str]] = {}

    def match(self, topic: str) -> TopicMatch:
        """Return what ``topic`` says, or raise :class:`DecodeError` (``unknown_topic``).

        Matches are cached (topics repeat: one per device and message kind); the cache is
        bounded and starts afresh when full.
        """
        found = self._cache.get(topic)
        if found is not None:
            return found
        found = self._match(topic)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[topic] = found
        return found

    def _shared_levels(self, found: dict[str, str]) -> Mapping[str, str]:
        """One mapping (never changed) for every match with the same levels, so that
        devices on one site share it and its strings."""
        key = (*found, *found.values())
        shared = self._levels.get(key)
        if shared is None:
            if len(self._levels) >= self._cache_size:
                self._levels.clear()
            shared = self._levels[key] = found
        return shared

    def _match(self, topic: str) -> TopicMatch:
        if len(topic) > MAX_TOPIC_LENGTH:
            raise DecodeError("unknown_topic", f"topic longer than {MAX_TOPIC_LENGTH}")
        parts = topic.split("/")
        for template in self.templates:
            found = template.match(parts)
            if found is None:
                continue
            device_id = found.pop("device_id")
            kind_text = found.pop("kind", "telemetry")
            kind = _KINDS.get(kind_text)
            if kind is None:
                raise DecodeError(
                    "unknown_kind",
                    f"topic kind {kind_text!r} is not one of {_KIND_NAMES}",
                    topic=topic,
                    device_id=device_id,
                )
            return TopicMatch(device_id=device_id, kind=kind, levels=self._shared_levels(found))
        raise DecodeError("unknown_topic", "no topic template matches", topic=topic)


def filter_matches(topic_filter: str, topic: str) -> bool:
    """Whether the MQTT ``topic_filter`` (``+`` one level, ``#`` the rest) covers ``topic``.

    >>> filter_matches("lora/+/up", "lora/gw1/up"), filter_matches("lora/#", "lora/gw1/up")
    (True, True)
    >>> filter_matches("lora/+/up", "lora/gw1/down"), filter_matches("lora/+", "lora/gw1/up")
    (False, False)
    """
    levels = topic.split("/")
    parts = topic_filter.split("/")
    for index, part in enumerate(parts):
        if part == "#":
            return True
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(parts) == len(levels)


class ContentTypeRules:
    """The content type of a message that names none: the first topic rule that matches,
    else the default (``[ingest] content_types`` and ``default_content_type``).

    >>> rules = ContentTypeRules([("lora/+/up", "application/cbor")], "application/json")
    >>> rules.content_type("lora/gw1/up"), rules.content_type("fleet/a/d1/telemetry")
    ('application/cbor', 'application/json')
    """

    def __init__(
        self, rules: Iterable[tuple[str, str]], default: str, cache_size: int = 200_000
    ) -> None:
        self.rules = tuple(rules)
        self.default = default
        self._cache: dict[str, str] = {}
        self._cache_size = cache_size

    def content_type(self, topic: str) -> str:
        """The content type for ``topic`` (cached per topic; the cache is bounded)."""
        if not self.rules:
            return self.default
        found = self._cache.get(topic)
        if found is not None:
            return found
        found = next(
            (ct for topic_filter, ct in self.rules if filter_matches(topic_filter, topic)),
            self.default,
        )
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[topic] = found
        return found
