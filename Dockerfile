# FleetWatch daemon image: build the locked environment, then run it as a non-root user.
#   docker build -t fleetwatch .
#   docker run --rm -v ./config:/etc/fleetwatch:ro -p 9108:9108 fleetwatch
FROM python:3.11-slim AS build
COPY --from=ghcr.io/astral-sh/uv:0.8 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/fleetwatch
WORKDIR /src
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-install-project
COPY README.md ./
COPY config ./config
COPY detectors ./detectors
COPY protocols ./protocols
COPY service ./service
RUN uv sync --locked --no-dev --no-editable

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/fleetwatch fleetwatch \
    && mkdir -p /etc/fleetwatch /var/lib/fleetwatch \
    && chown fleetwatch /var/lib/fleetwatch
COPY --from=build /opt/fleetwatch /opt/fleetwatch
COPY config/fleetwatch.example.toml /etc/fleetwatch/fleetwatch.toml
COPY config/advisories.toml /etc/fleetwatch/advisories.toml
ENV PATH=/opt/fleetwatch/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FLEETWATCH_HTTP__HOST=0.0.0.0
USER fleetwatch
WORKDIR /var/lib/fleetwatch
VOLUME ["/etc/fleetwatch", "/var/lib/fleetwatch"]
EXPOSE 9108 5683/udp
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status != 200)"]
# The daemon handles SIGTERM itself (stop intake, drain, flush alerts, go offline).
STOPSIGNAL SIGTERM
ENTRYPOINT ["fleetwatch"]
CMD ["run", "--config", "/etc/fleetwatch/fleetwatch.toml"]
