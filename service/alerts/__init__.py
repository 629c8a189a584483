"""What leaves FleetWatch: alerts and metrics.

``lifecycle`` turns detector signals into alert changes (firing, updated, resolved);
``sinks`` publishes them (MQTT topics, the log), each sink with its own bounded queue;
``alertmanager`` posts them to Prometheus Alertmanager; ``wire`` is the outbound topic and
payload format; ``metrics`` is FleetWatch's own Prometheus metrics. A new outbound path is a
sink here.

May import: ``service.records``, ``service.errors``, ``config``.
"""
