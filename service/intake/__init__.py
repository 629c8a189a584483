"""Intake: from a raw message to readings, and from readings to signals.

``pipeline`` decodes (codecs from ``protocols.codecs``), routes by topic (``topics``),
admits by the allow-list (``identity``), normalizes aliases, units and clocks
(``normalize``), remembers devices (``registry``), drops duplicates and feeds the detectors.

May import: ``service.alerts``, ``service.state``, ``service.records``, ``service.errors``,
``detectors``, ``protocols.codecs``, ``config``.
"""
