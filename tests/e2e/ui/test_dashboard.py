"""The dashboard in a real browser (Debian's headless Chromium through its chromedriver)
against the real stack: embedded Kafka, Mosquitto, the MQTT connector, a simulated Pico W.

Screenshots go to ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.api_helpers import wait_status
from tests.conftest import LedStack, LiveApi, SettingsFactory, serve

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
DEVICE = "pico-c1"  # the board of the led_stack fixture
T = TypeVar("T")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium; CI installs the Debian packages ``chromium`` and ``chromium-driver``."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver, "install the Debian packages chromium and chromium-driver"
    options = Options()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,900"):  # fmt: skip
        options.add_argument(argument)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield chrome
    finally:
        chrome.quit()


@dataclass
class Dashboard:
    api: LiveApi
    browser: WebDriver

    async def run(self, action: Callable[[], T]) -> T:
        """A browser call, off the event loop that serves the API."""
        return await asyncio.to_thread(action)

    async def until(self, check: Callable[[WebDriver], Any], within: float = 20) -> Any:
        """The first truthy answer of ``check`` (retried; element lookups may fail meanwhile)."""
        deadline = time.monotonic() + within
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                answer = await self.run(lambda: check(self.browser))
                if answer:
                    return answer
            except Exception as exc:  # the page is still changing
                last = exc
            await asyncio.sleep(0.1)
        await self.shot("timed-out")
        raise AssertionError(f"not seen within {within} s (last error: {last!r})")

    async def open(self, fragment: str) -> None:
        await self.run(lambda: self.browser.get(f"{self.api.base_url}/ui/{fragment}"))

    async def shot(self, name: str) -> None:
        await self.run(lambda: self.browser.save_screenshot(str(ARTIFACTS / f"{name}.png")))


def text_of(css: str) -> Callable[[WebDriver], str]:
    return lambda browser: browser.find_element(By.CSS_SELECTOR, css).text


@pytest.fixture
async def dashboard(led_stack: LedStack, browser: WebDriver) -> Dashboard:
    """The whole stack with one simulated Pico W (``pico-c1``), and the browser."""
    return Dashboard(led_stack.api, browser)


async def test_a_command_sent_from_the_form_reaches_succeeded_on_the_page(
    dashboard: Dashboard,
) -> None:
    """Devices shows the board online; Send posts control_led; the command's page follows it
    to succeeded, with its timeline and result, without a reload; Commands lists it."""
    await dashboard.open("#/devices")
    row = f'tr[data-device="{DEVICE}"]'
    assert await dashboard.until(lambda b: "online" in b.find_element(By.CSS_SELECTOR, row).text)
    await dashboard.shot("devices")

    await dashboard.run(lambda: dashboard.browser.find_element(By.LINK_TEXT, "Send").click())
    await dashboard.until(lambda b: b.find_element(By.ID, "send-form"))
    await dashboard.run(lambda: dashboard.browser.execute_script("window.sameDocument = true"))

    def fill() -> None:
        browser = dashboard.browser
        browser.find_element(By.ID, "send-device_id").send_keys(DEVICE)
        Select(browser.find_element(By.ID, "send-protocol")).select_by_value("mqtt")
        command_type = browser.find_element(By.ID, "send-command_type")
        command_type.clear()
        command_type.send_keys("control_led")
        payload = browser.find_element(By.ID, "send-payload")
        payload.clear()
        payload.send_keys('{"pin": 25, "state": true}')
        browser.find_element(By.ID, "send-timeout_seconds").send_keys("20")
        browser.find_element(By.ID, "send-submit").click()

    await dashboard.run(fill)
    url = await dashboard.until(lambda b: "#/command/" in b.current_url and b.current_url)
    request_id = url.rsplit("/", 1)[-1]
    status = await dashboard.until(
        lambda b: text_of("#command-status")(b) == "succeeded" and "succeeded", within=30
    )
    assert status == "succeeded"
    assert await dashboard.until(lambda b: "LED on pin 25 ON" in text_of("#result")(b))
    timeline = await dashboard.until(
        lambda b: "succeeded" in text_of("#timeline")(b) and text_of("#timeline")(b)
    )
    for step in ("queued", "sent", "succeeded"):
        assert step in timeline
    assert await dashboard.run(
        lambda: dashboard.browser.execute_script("return window.sameDocument")
    )
    await dashboard.shot("command")
    stored = await wait_status(dashboard.api, request_id, "succeeded")
    assert stored["device_id"] == DEVICE and stored["command_type"] == "control_led"

    await dashboard.run(lambda: dashboard.browser.find_element(By.LINK_TEXT, "Commands").click())
    listed = f'tr[data-request-id="{request_id}"]'
    assert await dashboard.until(
        lambda b: "succeeded" in b.find_element(By.CSS_SELECTOR, listed).text
    )
    await dashboard.shot("commands")

    # a tablet held upright: nothing wider than the screen
    await dashboard.run(lambda: dashboard.browser.set_window_size(768, 1024))
    try:
        width = "return [document.documentElement.scrollWidth, window.innerWidth]"
        scroll, inner = await dashboard.run(lambda: dashboard.browser.execute_script(width))
        assert scroll <= inner
        await dashboard.shot("commands-tablet")
    finally:
        await dashboard.run(lambda: dashboard.browser.set_window_size(1280, 900))


async def test_the_apis_validation_error_is_shown_next_to_the_field(
    dashboard: Dashboard,
) -> None:
    """A device id the API refuses: the message sits under the device field, which is marked
    invalid and focused; a payload that is not a JSON object is caught before sending;
    nothing was accepted."""
    await dashboard.open("#/send")
    await dashboard.until(lambda b: b.find_element(By.ID, "send-form"))
    unlabelled = await dashboard.run(
        lambda: dashboard.browser.execute_script(
            "return [...document.querySelectorAll('input, select, textarea')]"
            ".filter(c => c.type !== 'hidden' && !c.closest('[hidden]') && !c.labels.length)"
            ".map(c => c.id || c.name)"
        )
    )
    assert unlabelled == []  # every control has a label a screen reader can read

    def submit(device: str, payload: str) -> None:
        browser = dashboard.browser
        field = browser.find_element(By.ID, "send-device_id")
        field.clear()
        field.send_keys(device)
        body = browser.find_element(By.ID, "send-payload")
        body.clear()
        body.send_keys(payload)
        browser.find_element(By.ID, "send-submit").click()

    await dashboard.run(lambda: submit("bad/device", '{"pin": 25}'))
    message = await dashboard.until(text_of("#send-device_id-error"))
    assert "device_id" in message or "/" in message or "character" in message.lower()
    field = await dashboard.run(lambda: dashboard.browser.find_element(By.ID, "send-device_id"))
    assert await dashboard.run(lambda: field.get_attribute("aria-invalid")) == "true"
    focused = await dashboard.run(
        lambda: dashboard.browser.switch_to.active_element.get_attribute("id")
    )
    assert focused == "send-device_id"
    assert await dashboard.run(lambda: text_of("#send-payload-error")(dashboard.browser)) == ""
    await dashboard.shot("send-validation")

    await dashboard.run(lambda: submit(DEVICE, "[1, 2]"))
    assert "JSON object" in await dashboard.until(text_of("#send-payload-error"))
    listing = (await dashboard.api.client.get("/api/v1/commands")).json()
    assert listing["items"] == []


async def test_with_auth_on_the_key_is_asked_once_and_kept_out_of_urls(
    make_settings: SettingsFactory, browser: WebDriver
) -> None:
    """The page asks for the key, keeps it in session storage and sends it as the header:
    the devices load; the key never appears in the address."""
    key = "dashboard-key-0123456789"
    async with serve(make_settings(enable_auth=True, api_keys=key)) as api:
        ui = Dashboard(api, browser)
        await ui.run(
            lambda: (
                browser.execute_script("sessionStorage.clear()")
                if browser.current_url.startswith(api.base_url)
                else None
            )
        )
        await ui.open("#/devices")
        await ui.until(lambda b: b.find_element(By.ID, "api-key").is_displayed())

        def enter() -> None:
            browser.find_element(By.ID, "api-key").send_keys(key)
            browser.find_element(By.CSS_SELECTOR, "#key-form button").click()

        await ui.run(enter)
        await ui.until(
            lambda b: b.find_element(By.ID, "page").get_attribute("data-ready") == "devices"
        )
        await ui.until(
            lambda b: b.find_element(By.ID, "connection").get_attribute("data-state") == "live"
        )
        stored = await ui.run(
            lambda: browser.execute_script("return sessionStorage.getItem('pusher.apiKey')")
        )
        assert stored == key
        assert key not in await ui.run(lambda: browser.current_url)
        await ui.run(lambda: browser.execute_script("sessionStorage.clear()"))


async def test_a_queued_command_is_cancelled_from_its_page(dashboard: Dashboard) -> None:
    """A command for a board that is offline waits queued; its page offers Cancel, and the
    cancelled status arrives on the page by itself."""
    response = await dashboard.api.client.post(
        "/api/v1/commands",
        json={"device_id": "pico-asleep", "command_type": "control_led", "protocol": "mqtt",
              "payload": {"pin": 25, "state": True}},
    )  # fmt: skip
    assert response.status_code == 202
    request_id = response.json()["request_id"]
    await dashboard.open(f"#/command/{request_id}")
    await dashboard.until(lambda b: b.find_element(By.ID, "cancel").is_displayed())
    await dashboard.run(lambda: dashboard.browser.find_element(By.ID, "cancel").click())
    assert await dashboard.until(
        lambda b: text_of("#command-status")(b) == "cancelled" and "cancelled", within=30
    )
    assert await dashboard.until(lambda b: "cancelled" in text_of("#timeline")(b))
    assert (await wait_status(dashboard.api, request_id, "cancelled"))["status"] == "cancelled"
