"""The running daemon and its multi-process machinery.

``daemon`` wires transports, pipeline, sinks, state and HTTP into one process with explicit
phases; ``workers`` runs one coordinator and worker processes sharded by site (``shards``);
``fleet_facts`` exchanges what the workers must know of each other's sites;
``report_merge`` and ``metrics_merge`` combine their reports and metrics; ``broker`` starts
an embedded MQTT broker where none is given.

May import every room below: ``service.api``, ``service.intake``, ``service.alerts``,
``service.state``, ``service.records``, ``service.errors``, and ``detectors``,
``protocols``, ``config``.
"""
