"""FleetWatch's service: everything between a message arriving and an alert leaving.

The package is split into rooms, one per concern. Each room may import only rooms below it
(checked by ``tests/test_layout.py``)::

    commands     what a person runs: the CLI, the demo, the simulate command
    replay       recorded traffic through the pipeline, on one process or several
    runtime      the daemon, its worker processes and what they share
    api          HTTP: /metrics, the fleet API, the status page
    intake       from a raw message to readings and signals: the pipeline
    alerts       what leaves: alert lifecycle, sinks, Alertmanager, Prometheus metrics
    state        checkpoints and the journal, process memory
    simulator    a simulated fleet with planted faults (no other room)
    records      the records every part shares (Reading, Signal, AlertRecord ...)
    errors       FleetWatch's errors

``records`` and ``errors`` import nothing else of FleetWatch, so detectors depend on them
alone.
"""
