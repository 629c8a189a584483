"""Fleet API latency under load and status page render time, at fleet sizes that matter.

A fleet of N devices (spread over regions, facilities and zones, 2% of them with an open
alert) is loaded into a :class:`service.api.fleetview.FleetView` served by the daemon's HTTP
server on 127.0.0.1. Then:

- API latency: ``concurrency`` clients each send ``requests`` requests to one endpoint
  (a page of the device list, one device's twin, the GeoJSON of the whole fleet); p50 and
  p99 latency and requests per second;
- page render: headless Chromium (Debian's) opens the status page; the time from opening it
  until every device is on the map (seed bar: 5,000 devices within 5 s; aim: 50,000 within
  2 s).

    uv run python bench/fleet_view.py [--devices 5000 50000] [--requests 20 --concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.alerts.lifecycle import AlertManager
from service.api.fleetapi import FleetApi, FleetEvents
from service.api.fleetview import FleetView, SiteInfo
from service.api.http import HttpServer
from service.intake.registry import DeviceRegistry
from service.records import Severity, Signal

REGIONS = {"north": (55.0, 10.0), "south": (42.0, 12.0), "west": (47.0, -1.0)}


def build_view(devices: int, rng: random.Random) -> FleetView:
    registry = DeviceRegistry()
    sites: dict[str, SiteInfo] = {}
    site_names = [f"site-{i:02d}" for i in range(max(3, devices // 1000))]
    for i, name in enumerate(site_names):
        region = list(REGIONS)[i % len(REGIONS)]
        lat0, lon0 = REGIONS[region]
        sites[name] = SiteInfo(name.title(), region, lat0 + rng.uniform(-3, 3),
                               lon0 + rng.uniform(-3, 3))  # fmt: skip
    signals = []
    for i in range(devices):
        site = site_names[i % len(site_names)]
        info = sites[site]
        assert info.lat is not None and info.lon is not None
        meta = {
            "site": site, "zone": f"z{rng.randrange(8)}", "model": rng.choice(["TH-200", "PM-10"]),
            "firmware": rng.choice(["1.4.2", "1.5.0"]), "gateway": f"gw-{site}-{rng.randrange(4)}",
            "protocol": "mqtt", "lat": f"{info.lat + rng.uniform(-0.02, 0.02):.6f}",
            "lon": f"{info.lon + rng.uniform(-0.02, 0.02):.6f}",
        }  # fmt: skip
        registry.observe(f"dev-{i:06d}", 1_767_225_600.0, 1_767_225_600.0, meta)
        if rng.random() < 0.02:
            severity = Severity.CRITICAL if rng.random() < 0.3 else Severity.WARNING
            signals.append(Signal("rule.x", f"dev-{i:06d}", True, at=1_767_225_600.0,
                                  severity=severity, site=site))  # fmt: skip
    alerts = AlertManager()
    alerts.apply(signals)
    return FleetView(registry, alerts, sites=sites)


async def load(url: str, requests: int, concurrency: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    size = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal size
        for _ in range(requests):
            started = time.perf_counter()
            async with session.get(url) as response:
                body = await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - started)
            size = len(body)

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, size


def render_time(url: str, expected: int, timeout: float = 120.0) -> float:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="fleetwatch-bench-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--window-size=1400,900",
                 f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    try:
        driver.get(url)
        WebDriverWait(driver, timeout, poll_frequency=0.05).until(
            lambda d: d.execute_script("return window.fleetwatch.state.drawnMs") is not None
        )
        shown = driver.execute_script("return window.fleetwatch.shownCount()")
        assert shown == expected, (shown, expected)
        timings = driver.execute_script(
            "const s = window.fleetwatch.state; return [s.loadedMs, s.renderMs, s.drawnMs];"
        )
        print(f"  {expected:,} devices: data in {timings[0] / 1000:.2f} s, markers built in "
              f"{timings[1] / 1000:.2f} s, all on the map at {timings[2] / 1000:.2f} s")  # fmt: skip
        return float(timings[2]) / 1000.0
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def run(devices: int, args: argparse.Namespace) -> list[tuple[str, str]]:
    view = build_view(devices, random.Random(devices))
    events = FleetEvents()
    events.bind(view)
    server = HttpServer("127.0.0.1", 0, CollectorRegistry(), fleet_api=FleetApi(view, events))
    rows: list[tuple[str, str]] = []
    async with server:
        base = server.url
        for name, path in (
            ("devices list (page of 100)", "/api/devices?limit=100&site=site-01"),
            ("one device (twin)", "/api/devices/dev-000042"),
            (f"GeoJSON of {devices:,} devices", "/api/geo/devices"),
        ):
            latencies, wall, size = await load(base + path, args.requests, args.concurrency)
            rows.append((
                f"{devices:,} devices: {name}",
                f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
                f"p99 {_p99(latencies) * 1000:.1f} ms, "
                f"{len(latencies) / wall:.0f} req/s, "
                + (f"{size / 1024:.0f} KiB" if size >= 10_240 else f"{size} bytes"),
            ))  # fmt: skip
        if not args.no_browser:
            seconds = await asyncio.to_thread(render_time, base + "/", devices)
            rows.append((f"{devices:,} devices: page shows every device", f"{seconds:.2f} s"))
    return rows


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(0.99 * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[5_000, 50_000])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    for devices in args.devices:
        rows += asyncio.run(run(devices, args))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
