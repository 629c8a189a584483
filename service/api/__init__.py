"""The HTTP side: /metrics, /healthz, the fleet API and the status page.

``http`` is the server and its security; ``fleetapi`` the routes under ``/api``;
``fleetview`` the per-device status the routes serve; ``fleetview_shards`` the same view
over worker processes; ``static/`` the page. A new API route goes in ``fleetapi``.

May import: ``service.intake``, ``service.alerts``, ``service.state``, ``service.records``,
``service.errors``, ``config``.
"""
