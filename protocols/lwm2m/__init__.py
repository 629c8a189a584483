"""LwM2M 1.1 server over CoAP: registration interface, observations, Send, object model.

- :mod:`protocols.lwm2m.objects`: the object model (objects 3, 4, 5, 6 and IPSO sensors)
  and how resources map onto FleetWatch records (metrics, metadata, firmware events);
- :mod:`protocols.lwm2m.tlv`: the OMA TLV format (content format 11542);
- :mod:`protocols.lwm2m.content`: every content format LwM2M clients answer with (TLV,
  SenML JSON and CBOR, LwM2M JSON, plain text, CBOR) decoded into resource values;
- :mod:`protocols.lwm2m.registry`: registrations, their lifetimes and their persistence;
- :mod:`protocols.lwm2m.server`: the ``/rd`` and ``/dp`` resources on the CoAP port and
  the observations FleetWatch keeps on every registered device.

Nothing here imports :mod:`detectors`: LwM2M devices reach the detectors as FleetWatch
records through the same intake, normalization and journal as MQTT and CoAP telemetry.
"""

TOPIC_TEMPLATE = "lwm2m/{device_id}/{kind}"
"""How LwM2M messages are addressed inside the pipeline (:mod:`service.intake.pipeline` routes
protocol ``lwm2m`` with it; ``kind`` is ``telemetry``, ``status`` or ``firmware``)."""
