"""The status page in a real headless Chromium (Debian's chromium and chromedriver, driven by
Selenium) against a daemon fed by the simulator: it loads, shows every device, a device turns
red when its alert fires, drill-down and floor plans work; a screenshot is saved."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fleet_helpers import START, simulated_fleet, wait_processed

pytestmark = pytest.mark.broker

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("FLEETWATCH_ARTIFACTS", Path(__file__).parents[1] / ".artifacts"))

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="fleetwatch-chromium-")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1400,900",
        f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def until(driver: webdriver.Chrome, script: str, expected: Any, timeout: float = 15.0) -> None:
    """Poll ``script`` in the page until it returns ``expected`` (bounded)."""
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script(script) == expected,
        message=f"{script} never returned {expected!r}",
    )


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking browser step without stalling the daemon's event loop."""
    return await asyncio.to_thread(fn, *args)


async def test_the_page_shows_the_fleet_live_and_drills_down(  # type: ignore[no-untyped-def]
    broker, topic_prefix, mqtt_client, browser
) -> None:
    async with simulated_fleet(broker, topic_prefix, mqtt_client, faults=()) as fleet:
        devices = fleet.simulator.devices
        # a facility without coordinates: its devices carry floor-plan positions
        plan = [(f"fp-{i}", 5.0 + 10 * (i % 4), 4.0 + 6 * (i // 4)) for i in range(8)]
        for device_id, x, y in plan:
            body = {"ts": START + 60, "seq": 1, "temperature_c": 21.0, "x": x, "y": y,
                    "zone": "hall", "model": "TH-200"}  # fmt: skip
            await mqtt_client.publish(f"{topic_prefix}/fleet/plant-f/{device_id}/telemetry",
                                      orjson.dumps(body))  # fmt: skip
        await wait_processed(fleet.daemon, fleet.sent + len(plan))

        await in_thread(browser.get, fleet.url + "/")
        await in_thread(until, browser, "return window.fleetwatch.state.ready", True)
        await in_thread(until, browser, "return window.fleetwatch.shownCount()", len(devices))
        await in_thread(until, browser, "return window.fleetwatch.state.live", True)
        counted = await in_thread(
            browser.execute_script, "return window.fleetwatch.state.devices.size"
        )
        assert counted == len(devices) + len(plan)

        # an alert fires: the device turns red on the open page, without a reload
        target = next(d for d in devices if d.model.battery)
        assert (
            await in_thread(
                browser.execute_script, f"return window.fleetwatch.statusOf('{target.device_id}')"
            )
            == "ok"
        )
        breach = orjson.dumps({"ts": START + 3600, "seq": 999, "battery_v": 3.0})
        await mqtt_client.publish(
            f"{topic_prefix}/fleet/{target.site}/{target.device_id}/telemetry", breach
        )
        await in_thread(
            until, browser, f"return window.fleetwatch.statusOf('{target.device_id}')", "critical"
        )
        await in_thread(until, browser,
                        "return document.querySelectorAll('#alerts li').length", 1)  # fmt: skip
        # the location list counts it too: one device in trouble in its region
        region = "Benelux" if target.site == "plant-a" else "Alps"
        await in_thread(until, browser, "return document.querySelector("
                        f"\"#levels li[data-name='{region}'] .trouble\").textContent", "1")  # fmt: skip
        # drawn red: on its own or as the cluster it is part of (a cluster takes its worst)
        await in_thread(until, browser,
                        f"return window.fleetwatch.colourOf('{target.device_id}')", "#c62828")  # fmt: skip
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await in_thread(browser.save_screenshot, str(ARTIFACTS / "status-page.png"))
        assert (ARTIFACTS / "status-page.png").stat().st_size > 10_000

        # drill down: region > facility > zone
        def click(level: str, name: str) -> None:
            browser.find_element(
                By.CSS_SELECTOR, f"#levels li[data-level='{level}'][data-name='{name}']"
            ).click()

        alps = [d for d in devices if d.site in ("plant-b", "plant-c")]
        await in_thread(click, "region", "Alps")
        await in_thread(until, browser, "return window.fleetwatch.shownCount()", len(alps))
        plant_b = [d for d in devices if d.site == "plant-b"]
        await in_thread(click, "site", "plant-b")
        await in_thread(until, browser, "return window.fleetwatch.shownCount()", len(plant_b))
        zone = sorted({d.zone for d in plant_b})[0]
        in_zone = [d for d in plant_b if d.zone == zone]
        await in_thread(click, "zone", zone)
        await in_thread(until, browser, "return window.fleetwatch.shownCount()", len(in_zone))
        await in_thread(browser.save_screenshot, str(ARTIFACTS / "status-page-zone.png"))

        # a facility with floor-plan positions opens on its plan
        await in_thread(
            lambda: browser.find_element(By.CSS_SELECTOR, "#crumbs a[data-depth='0']").click()
        )
        await in_thread(click, "region", "unassigned")
        await in_thread(click, "site", "plant-f")
        await in_thread(until, browser, "return window.fleetwatch.shownCount()", len(plan))
        await in_thread(until, browser, "return document.getElementById('floor').hidden", False)
        await in_thread(browser.save_screenshot, str(ARTIFACTS / "status-page-floor.png"))
